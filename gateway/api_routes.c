/* api_routes.c - the REST route table and its one generic handler.
 *
 * Adding a route is adding a row: the api_* function of sql/003_api.sql and the
 * arguments it takes, in order. The workspace filter lives in those functions (every
 * one under /workspaces/{ws} resolves {ws} against the caller's memberships first); the
 * table only decides what is passed, so no route can pass a workspace id the SQL does
 * not check.
 */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "api_internal.h"
#include "chorus/log.h"
#include "chorus/status.h"

typedef enum arg_kind {
    ARG_END = 0,
    ARG_CALLER, /* the authenticated user id (bigint) */
    ARG_ID,     /* a path id (bigint); anything but a positive integer is a 404 */
    ARG_TEXT,   /* a path segment as text (the emoji) */
    ARG_BODY,   /* the request body, a JSON object (jsonb) */
    ARG_QUERY,  /* a query argument as text, NULL when absent */
    ARG_PARTS,  /* the partition count (int), for the outbox */
} arg_kind;

typedef struct api_arg {
    arg_kind kind;
    const char *name; /* path parameter or query argument */
} api_arg;

struct api_route {
    const char *method;
    const char *path; /* below API_PREFIX */
    const char *fn;   /* the api_* function, also the prepared statement's name */
    api_arg args[API_MAX_ARGS];
};

#define CALLER {ARG_CALLER, NULL}
#define ID(n) {ARG_ID, n}
#define BODY {ARG_BODY, NULL}
#define QUERY(n) {ARG_QUERY, n}
#define PARTS {ARG_PARTS, NULL}
#define LIST QUERY("limit"), QUERY("cursor")
#define WS_ "/workspaces/{ws}"
#define CH_ WS_ "/channels/{ch}"

static const api_route routes[] = {
    {"GET", "/me", "api_me", {CALLER}},
    {"POST", "/workspaces", "api_workspace_create", {CALLER, BODY, PARTS}},
    {"GET", "/workspaces", "api_workspace_list", {CALLER, LIST}},
    {"GET", WS_, "api_workspace_get", {CALLER, ID("ws")}},
    {"PATCH", WS_, "api_workspace_update", {CALLER, ID("ws"), BODY, PARTS}},
    {"DELETE", WS_, "api_workspace_delete", {CALLER, ID("ws"), PARTS}},
    {"POST", WS_ "/members", "api_ws_member_add", {CALLER, ID("ws"), BODY, PARTS}},
    {"GET", WS_ "/members", "api_ws_member_list", {CALLER, ID("ws"), LIST}},
    {"DELETE", WS_ "/members/{user_id}", "api_ws_member_remove",
     {CALLER, ID("ws"), ID("user_id"), PARTS}},
    {"POST", WS_ "/channels", "api_channel_create", {CALLER, ID("ws"), BODY, PARTS}},
    {"GET", WS_ "/channels", "api_channel_list", {CALLER, ID("ws"), LIST}},
    {"GET", CH_, "api_channel_get", {CALLER, ID("ws"), ID("ch")}},
    {"PATCH", CH_, "api_channel_update", {CALLER, ID("ws"), ID("ch"), BODY, PARTS}},
    {"DELETE", CH_, "api_channel_delete", {CALLER, ID("ws"), ID("ch"), PARTS}},
    {"POST", CH_ "/members", "api_channel_member_add", {CALLER, ID("ws"), ID("ch"), BODY, PARTS}},
    {"GET", CH_ "/members", "api_channel_member_list", {CALLER, ID("ws"), ID("ch"), LIST}},
    {"DELETE", CH_ "/members/{user_id}", "api_channel_member_remove",
     {CALLER, ID("ws"), ID("ch"), ID("user_id"), PARTS}},
    {"POST", CH_ "/join", "api_channel_join", {CALLER, ID("ws"), ID("ch"), PARTS}},
    {"POST", CH_ "/messages", "api_message_post", {CALLER, ID("ws"), ID("ch"), BODY, PARTS}},
    {"GET", CH_ "/messages", "api_message_list",
     {CALLER, ID("ws"), ID("ch"), QUERY("after_seq"), QUERY("before_seq"), QUERY("parent_id"),
      LIST}}, /* served through the page cache: see route_runner */
    {"PATCH", CH_ "/messages/{id}", "api_message_update",
     {CALLER, ID("ws"), ID("ch"), ID("id"), BODY, PARTS}},
    {"DELETE", CH_ "/messages/{id}", "api_message_delete",
     {CALLER, ID("ws"), ID("ch"), ID("id"), PARTS}},
    {"PUT", CH_ "/messages/{id}/reactions/{emoji}", "api_reaction_put",
     {CALLER, ID("ws"), ID("ch"), ID("id"), {ARG_TEXT, "emoji"}, PARTS}},
    {"DELETE", CH_ "/messages/{id}/reactions/{emoji}", "api_reaction_delete",
     {CALLER, ID("ws"), ID("ch"), ID("id"), {ARG_TEXT, "emoji"}, PARTS}},
    {"POST", CH_ "/read", "api_read", {CALLER, ID("ws"), ID("ch"), BODY, PARTS}},
};

#define NROUTES (sizeof routes / sizeof routes[0])
#define API_MAX_ATTEMPTS 3

static const char *arg_cast(arg_kind k)
{
    switch (k) {
    case ARG_CALLER:
    case ARG_ID: return "::bigint";
    case ARG_BODY: return "::jsonb";
    case ARG_PARTS: return "::int";
    default: return "::text";
    }
}

/* "SELECT status, body::text FROM api_x($1::bigint, $2::jsonb, ...)" */
static void route_sql(const api_route *rt, char *out, size_t n)
{
    size_t len = (size_t)snprintf(out, n, "SELECT status, body::text FROM %s(", rt->fn);
    for (int i = 0; i < API_MAX_ARGS && rt->args[i].kind != ARG_END && len < n; i++)
        len += (size_t)snprintf(out + len, n - len, "%s$%d%s", i ? ", " : "", i + 1,
                                arg_cast(rt->args[i].kind));
    if (len < n)
        snprintf(out + len, n - len, ")");
}

static bool is_write(const api_route *rt)
{
    return strcmp(rt->method, "GET") != 0;
}

/* Path ids are positive integers that fit a bigint; anything else names nothing. */
static bool valid_id(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 18 || s[0] == '0')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i]))
            return false;
    return true;
}

/* The body must be one JSON object; 400 otherwise. jansson parses it here only to
 * refuse garbage early; the text itself goes to Postgres as jsonb. */
static bool body_ok(http_req *r, const char **out)
{
    size_t len = 0;
    const char *body = http_req_body(r, &len);
    json_error_t e;
    json_t *j = body && len ? json_loadb(body, len, 0, &e) : NULL;
    bool ok = j && json_is_object(j);
    json_decref(j);
    if (!ok) {
        char msg[200];
        if (!body || !len)
            snprintf(msg, sizeof msg, "the request needs a JSON object body");
        else if (!j)
            snprintf(msg, sizeof msg, "malformed JSON: %s (line %d, column %d)", e.text, e.line,
                     e.column);
        else
            snprintf(msg, sizeof msg, "the body must be a JSON object");
        http_respond_error(r, 400, "invalid_json", msg);
        return false;
    }
    *out = body;
    return true;
}

/* Fills call->params from the request; answers the request itself and returns false
 * when it cannot be called (bad id: 404, bad body: 400). */
static bool collect_args(api_call *c)
{
    for (int i = 0; i < API_MAX_ARGS && c->rt->args[i].kind != ARG_END; i++) {
        const api_arg *a = &c->rt->args[i];
        const char *v = NULL;
        switch (a->kind) {
        case ARG_CALLER: v = c->caller; break;
        case ARG_ID:
            v = http_req_param(c->r, a->name);
            if (!valid_id(v)) {
                http_respond_error(c->r, 404, "not_found", "no such resource");
                return false;
            }
            break;
        case ARG_TEXT: v = http_req_param(c->r, a->name); break;
        case ARG_BODY:
            if (!body_ok(c->r, &v))
                return false;
            break;
        case ARG_QUERY: v = http_req_query(c->r, a->name); break;
        case ARG_PARTS: v = c->x->partitions_text; break;
        case ARG_END: break;
        }
        c->params[c->nparams++] = v;
    }
    return true;
}

void api_call_free(api_call *c)
{
    free(c->cache_key);
    free(c);
}

/* The {ch} of the call's path, 0 when it has none. */
static int64_t call_channel(const api_call *c)
{
    for (int i = 0; i < API_MAX_ARGS && c->rt->args[i].kind != ARG_END; i++)
        if (c->rt->args[i].kind == ARG_ID && strcmp(c->rt->args[i].name, "ch") == 0)
            return atoll(c->params[i]);
    return 0;
}

static void on_result(void *arg, PGresult *res, const char *err)
{
    api_call *c = arg;
    if (api_result_is_retry(res) && c->attempts < API_MAX_ATTEMPTS) {
        api_call_run(c);
        return;
    }
    if (is_write(c->rt)) {
        /* before the answer: the caller's next read must see it */
        fresh_note_write(c->x->fresh, c->rt->method, call_channel(c),
                         ev_now(app_loop(c->x->app)));
        if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
            atoi(PQgetvalue(res, 0, 0)) < 300)
            app_outbox_knock(c->x->app); /* its event is waiting in the outbox */
    }
    api_respond_result(c->r, res, err);
    api_call_free(c);
}

void api_call_run(api_call *c)
{
    c->attempts++;
    int rc = pgpool_query(c->x->pg, c->rt->fn, c->nparams, c->params, on_result, c);
    if (rc != CHORUS_OK) {
        http_req_add_header(c->r, "retry-after", "1");
        http_respond_error(c->r, 503, "unavailable",
                           rc == CHORUS_AGAIN ? "too many requests are waiting for the database"
                                              : "the database call could not be made");
        api_call_free(c);
    }
}

/* Handlers get (route, api) through one small struct per route. */
typedef struct route_binding {
    api *x;
    const api_route *rt;
    void (*run)(api_call *c);
} route_binding;

/* History pages go through the page cache (api_history.c); everything else is called
 * straight. */
static void (*route_runner(const api_route *rt))(api_call *)
{
    return strcmp(rt->fn, "api_message_list") == 0 ? api_history_run : api_call_run;
}

static void handle_route(http_req *r, void *arg)
{
    route_binding *b = arg;
    int64_t user = 0;
    if (!api_authenticate(b->x, r, &user))
        return;
    if (is_write(b->rt) && !api_rate_ok(b->x, b->x->writes, user, r))
        return;
    api_call *c = calloc(1, sizeof *c);
    if (!c) {
        http_respond_error(r, 500, "internal", "out of memory");
        return;
    }
    c->x = b->x;
    c->rt = b->rt;
    c->r = r;
    snprintf(c->caller, sizeof c->caller, "%lld", (long long)user);
    if (!collect_args(c)) {
        api_call_free(c);
        return;
    }
    b->run(c);
}

int api_register_routes(api *x, httpd *h)
{
    route_binding *bindings = calloc(NROUTES, sizeof *bindings);
    if (!bindings)
        return CHORUS_ERR;
    x->bindings = bindings;
    char sql[512], path[256];
    for (size_t i = 0; i < NROUTES; i++) {
        bindings[i].x = x;
        bindings[i].rt = &routes[i];
        bindings[i].run = route_runner(&routes[i]);
        route_sql(&routes[i], sql, sizeof sql);
        snprintf(path, sizeof path, API_PREFIX "%s", routes[i].path);
        if (pgpool_prepare(x->pg, routes[i].fn, sql) != CHORUS_OK ||
            httpd_route(h, routes[i].method, path, handle_route, &bindings[i]) != CHORUS_OK) {
            log_error("api: cannot register %s %s", routes[i].method, path);
            return CHORUS_ERR;
        }
    }
    return CHORUS_OK;
}

void api_print_routes(FILE *out)
{
    /* registered elsewhere: api_auth.c, gateway.c, realtime.c and (on every listener)
     * app_admin.c */
    fputs("POST " API_PREFIX "/auth/signup\nPOST " API_PREFIX "/auth/login\n"
          "POST " API_PREFIX "/realtime/connect\n"
          "GET " API_PREFIX "/openapi.json\nGET /healthz\nGET /readyz\nGET /metrics\n", out);
    for (size_t i = 0; i < NROUTES; i++)
        fprintf(out, "%s " API_PREFIX "%s\n", routes[i].method, routes[i].path);
}
