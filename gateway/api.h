/* api.h - the REST API of the gateway (docs/REST.md), inside the gateway module.
 *
 * Every route is one row of a table (api_routes.c): its method and path, the api_*
 * function of sql/003_api.sql it calls, and the arguments it passes. One generic
 * handler authenticates the caller, applies the write rate limit, checks the path ids
 * and the body, calls the function (one round trip, one transaction) and turns its
 * (status, body) or its error into the HTTP answer. Signup and login (api_auth.c) add
 * the password work, which runs on the worker threads, never on the loop.
 */
#ifndef CHORUS_GATEWAY_API_H
#define CHORUS_GATEWAY_API_H

#include <stdbool.h>
#include <stdio.h>
#include <stdint.h>

#include "chorus/app.h"
#include "chorus/httpd.h"
#include "chorus/pgpool.h"
#include "chorus/ratelimit.h"
#include "chorus/workpool.h"

#define API_PREFIX "/api/v1"

typedef struct history_cache history_cache;
typedef struct fresh fresh;

typedef struct api {
    app *app;
    pgpool *pg;
    workpool *workers;
    ratelimit *writes;    /* per user id */
    ratelimit *anon;      /* signup and login, per client address */
    const char *secret;
    size_t secret_len;
    int ttl_s;
    int partitions;
    char partitions_text[16];
    char dummy_hash[256]; /* verified when a login names no user, so both take as long */
    void *bindings;       /* the route table's handler arguments (api_routes.c) */
    history_cache *history; /* rendered history pages (api_history.c) */
    fresh *fresh;           /* when a page may skip Postgres (api_fresh.c) */
} api;

/* Creates the API state and registers every route on h. NULL on failure (logged). */
api *api_new(app *a, httpd *h);
void api_free(api *x);
/* Stops reading the event streams (the app is stopping). */
void api_stop(api *x);

/* The user id of a valid bearer token; answers 401 itself and returns false otherwise. */
bool api_authenticate(api *x, http_req *r, int64_t *user);
/* Spends one write token of key; answers 429 with Retry-After itself when none is left. */
bool api_rate_ok(api *x, ratelimit *rl, int64_t key, http_req *r);
/* Answers from a result of an api_* function: its (status, body), or its error. */
void api_respond_result(http_req *r, PGresult *res, const char *err);
/* True when res is the error by which a function asks to be run once more. */
bool api_result_is_retry(PGresult *res);

/* Prepares the statement of every table route and adds it to h (api_routes.c). */
int api_register_routes(api *x, httpd *h);
/* "METHOD /api/v1/path" of every route, one a line, the auth routes included. */
void api_print_routes(FILE *out);

/* Signup and login routes (api_auth.c). */
int api_auth_routes(api *x, httpd *h);

#endif
