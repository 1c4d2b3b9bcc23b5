/* gateway.c - the HTTP front door: REST, GraphQL, realtime routing (later issues).
 * For now it owns the public listener, where every process' admin routes live too. */
#include "gateway.h"

#include <stdlib.h>

#include "chorus/httpd.h"
#include "chorus/log.h"
#include "chorus/status.h"

typedef struct gateway {
    app *app;
    httpd *http;
} gateway;

static int gateway_start(app *a, void **state)
{
    gateway *g = calloc(1, sizeof *g);
    if (!g)
        return CHORUS_ERR;
    *state = g;
    g->app = a;
    g->http = app_http(a, app_config(a)->gateway_port);
    return g->http ? CHORUS_OK : CHORUS_ERR;
}

static void gateway_free(void *state)
{
    free(state);
}

const role_def gateway_role = {
    .name = "gateway",
    .needs_pg = true,
    .needs_redis = true,
    .start = gateway_start,
    .stop = NULL,
    .free = gateway_free,
};
