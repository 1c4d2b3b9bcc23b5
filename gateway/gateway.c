/* gateway.c - the HTTP front door: the REST API (api*.c), its OpenAPI document, and
 * (later issues) GraphQL and realtime routing. Its listener carries the admin routes. */
#include "gateway.h"

#include <stdlib.h>

#include "api.h"
#include "proxy.h"
#include "realtime.h"
#include "chorus/httpd.h"
#include "chorus/log.h"
#include "chorus/status.h"

extern const char chorus_openapi_json[];
extern const unsigned long chorus_openapi_json_len;

typedef struct gateway {
    app *app;
    httpd *http;
    api *api;
    realtime *realtime;
    proxy *proxy;
} gateway;

static void get_openapi(http_req *r, void *arg)
{
    (void)arg;
    http_req_add_header(r, "cache-control", "public, max-age=300");
    http_respond(r, 200, "application/json", chorus_openapi_json, chorus_openapi_json_len);
}

static int gateway_start(app *a, void **state)
{
    gateway *g = calloc(1, sizeof *g);
    if (!g)
        return CHORUS_ERR;
    *state = g;
    g->app = a;
    g->http = app_http(a, app_config(a)->gateway_port);
    if (!g->http)
        return CHORUS_ERR;
    if (httpd_route(g->http, "GET", API_PREFIX "/openapi.json", get_openapi, g) != CHORUS_OK)
        return CHORUS_ERR;
    g->api = api_new(a, g->http);
    if (!g->api)
        return CHORUS_ERR;
    g->realtime = realtime_new(a, g->api, g->http);
    if (!g->realtime)
        return CHORUS_ERR;
    g->proxy = proxy_new(a, g->realtime, g->http);
    return g->proxy ? CHORUS_OK : CHORUS_ERR;
}

static void gateway_stop(void *state)
{
    gateway *g = state;
    if (!g)
        return;
    realtime_stop(g->realtime);
    api_stop(g->api);
}

static void gateway_free(void *state)
{
    gateway *g = state;
    if (!g)
        return;
    proxy_free(g->proxy);
    realtime_free(g->realtime);
    api_free(g->api);
    free(g);
}

const role_def gateway_role = {
    .name = "gateway",
    .needs_pg = true,
    .needs_redis = true,
    .start = gateway_start,
    .stop = gateway_stop,
    .free = gateway_free,
};
