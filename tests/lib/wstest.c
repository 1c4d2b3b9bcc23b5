/* wstest.c - session helpers of the WSS tests (wstest.h). */
#include "wstest.h"

#include <msgpack.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "api.h"
#include "chorus/event.h"
#include "chorus/rclient.h"

void wst_open(ws_client *c, int port, const char *token, const char *proto)
{
    int st = ws_connect(c, port, api_p("/ws?token=%s", token), proto, NULL);
    if (st != 101)
        fail_msg("upgrade answered %d, not 101", st);
}

static json_t *decode(const ws_frame *f, bool msgpack)
{
    if (!msgpack)
        return json_loadb(f->data, f->len, 0, NULL);
    json_t *j = NULL;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    if (msgpack_unpack_next(&u, f->data, f->len, NULL) == MSGPACK_UNPACK_SUCCESS)
        j = json_from_msgpack(&u.data);
    msgpack_unpacked_destroy(&u);
    return j;
}

json_t *wst_next(ws_client *c, bool msgpack, int timeout_ms)
{
    json_t *j = wst_try_next(c, msgpack, timeout_ms);
    if (!j)
        fail_msg("no frame within %d ms", timeout_ms);
    return j;
}

bool wst_keep_presence;

static json_t *next_frame(ws_client *c, bool msgpack, int timeout_ms)
{
    ws_frame f;
    if (ws_recv(c, &f, timeout_ms) != 0)
        return NULL;
    if (f.opcode != (msgpack ? 2 : 1))
        fail_msg("expected a %s frame, got opcode %d (close code %d)",
                 msgpack ? "binary" : "text", f.opcode, f.close_code);
    json_t *j = decode(&f, msgpack);
    if (!j)
        fail_msg("a frame that does not decode: %s", msgpack ? "(binary)" : f.data);
    ws_frame_free(&f);
    return j;
}

json_t *wst_try_next(ws_client *c, bool msgpack, int timeout_ms)
{
    for (int64_t end = test_now_ms() + timeout_ms;;) {
        int64_t left = end - test_now_ms();
        json_t *j = next_frame(c, msgpack, left > 0 ? (int)left : 0);
        const char *t = json_string_value(json_object_get(j, "t"));
        if (!j || wst_keep_presence || !t || strcmp(t, "presence") != 0)
            return j;
        json_decref(j);
    }
}

json_t *wst_next_json(ws_client *c)
{
    return wst_next(c, false, 5000);
}

void wst_expect_close(ws_client *c, int code, int timeout_ms)
{
    ws_frame f;
    if (ws_recv(c, &f, timeout_ms) != 0)
        fail_msg("expected close %d, got nothing within %d ms", code, timeout_ms);
    if (f.opcode != 8)
        fail_msg("expected close %d, got opcode %d: %s", code, f.opcode, f.data);
    assert_int_equal(f.close_code, code);
    ws_frame_free(&f);
}

void wst_expect_t(ws_client *c, const char *t, const char *code)
{
    json_t *j = wst_next_json(c);
    if (strcmp(api_str(j, "t"), t) != 0)
        fail_msg("expected a %s frame, got %s", t, json_dumps(j, JSON_COMPACT));
    if (code)
        assert_string_equal(api_str(j, "code"), code);
    json_decref(j);
}

void wst_expect_nothing(ws_client *c, int ms)
{
    ws_frame f;
    for (int64_t end = test_now_ms() + ms; test_now_ms() < end;) {
        if (ws_recv(c, &f, (int)(end - test_now_ms())) != 0)
            return;
        json_t *j = f.opcode == 1 || f.opcode == 2 ? decode(&f, f.opcode == 2) : NULL;
        const char *t = json_string_value(json_object_get(j, "t"));
        if (!j || wst_keep_presence || !t || strcmp(t, "presence") != 0)
            fail_msg("a frame arrived, none was expected: %s",
                     j ? json_dumps(j, JSON_COMPACT) : "(not JSON)");
        json_decref(j);
        ws_frame_free(&f);
    }
}

void wst_await_published(PGconn *pg, long long ch)
{
    char q[160];
    snprintf(q, sizeof q,
             "SELECT count(*) FROM outbox WHERE channel_id = %lld AND published_at IS NULL", ch);
    for (int64_t end = test_now_ms() + 10000; api_db_int(pg, q, NULL) > 0; usleep(20000))
        if (test_now_ms() > end)
            fail_msg("the outbox worker did not publish channel %lld's events in 10 s", ch);
}

redisContext *wst_redis(const char *url)
{
    char host[64];
    int port, db;
    assert_int_equal(rclient_parse_url(url, host, sizeof host, &port, &db), 0);
    redisContext *rc = redisConnect(host, port);
    assert_true(rc && !rc->err);
    freeReplyObject(redisCommand(rc, "SELECT %d", db));
    return rc;
}
