/* wstest.h - what the WSS tests do with a session, on top of wsclient.h: open one,
 * read the next frame as JSON (either protocol), expect a type, a close code or
 * silence. Each fails the running cmocka test when the server does otherwise. */
#ifndef CHORUS_WSTEST_H
#define CHORUS_WSTEST_H

#include <stdbool.h>

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "wsclient.h"

/* Presence frames come whenever users of a shared workspace connect or leave, so
 * wst_next and wst_try_next pass them over unless this is set (presence tests). */
extern bool wst_keep_presence;

/* Connects to ws://127.0.0.1:port/ws?token= with the subprotocol (NULL: none); fails
 * unless upgraded. */
void wst_open(ws_client *c, int port, const char *token, const char *proto);
/* The next frame (within timeout_ms) decoded to JSON: a text frame, or a binary one
 * when msgpack. Fails on anything else. */
json_t *wst_next(ws_client *c, bool msgpack, int timeout_ms);
/* The same, or NULL when no frame comes within timeout_ms. */
json_t *wst_try_next(ws_client *c, bool msgpack, int timeout_ms);
/* The next text frame as JSON, within 5 s. */
json_t *wst_next_json(ws_client *c);
/* The next frame must be a close with this code (within timeout_ms). */
void wst_expect_close(ws_client *c, int code, int timeout_ms);
/* The next frame has this "t" (and this "code" when not NULL). */
void wst_expect_t(ws_client *c, const char *t, const char *code);
/* No frame for ms. */
void wst_expect_nothing(ws_client *c, int ms);
/* A synchronous connection to a redis:// URL (its db selected); fails the test if
 * none. */
redisContext *wst_redis(const char *url);
/* Waits (10 s at most) until the outbox worker has published every event of ch. */
void wst_await_published(PGconn *pg, long long ch);

#endif
