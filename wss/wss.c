/* wss.c - the fungible WebSocket node (real-time delivery arrives with its issue).
 * For now it owns its listener, which serves the admin routes of the node. */
#include "wss.h"

#include <stdlib.h>

#include "chorus/httpd.h"
#include "chorus/status.h"

typedef struct wss_node {
    app *app;
    httpd *http;
} wss_node;

static int wss_start(app *a, void **state)
{
    wss_node *n = calloc(1, sizeof *n);
    if (!n)
        return CHORUS_ERR;
    *state = n;
    n->app = a;
    n->http = app_http(a, app_config(a)->wss_port);
    return n->http ? CHORUS_OK : CHORUS_ERR;
}

static void wss_free(void *state)
{
    free(state);
}

const role_def wss_role = {
    .name = "wss",
    .needs_pg = true,
    .needs_redis = true,
    .start = wss_start,
    .stop = NULL,
    .free = wss_free,
};
