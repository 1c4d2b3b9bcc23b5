/* wss.c - the fungible WebSocket node (DESIGN.md, API.md "WebSocket"): its listener
 * (which also serves the node's admin routes), its sessions (wss_session.c), the
 * delivery of the channel streams to them (wss_fanout.c) and its metrics. */
#include "wss.h"

#include <stdlib.h>
#include <string.h>

#include "chorus/httpd.h"
#include "chorus/log.h"
#include "chorus/pgpool.h"
#include "chorus/status.h"
#include "wss_internal.h"

static void wss_metrics(wss_node *n)
{
    n->m_sessions = metrics_gauge("chorus_wss_connections", "open WebSocket sessions");
    n->m_closes_slow = metrics_counter("chorus_wss_slow_consumer_closes_total",
                                       "sessions closed with 4008: outbound queue full");
    n->m_frames_out = metrics_counter("chorus_wss_frames_sent_total", "frames written");
    n->m_bytes_queued = metrics_gauge("chorus_wss_outbound_queued_bytes",
                                      "bytes queued for sessions, not yet written");
}

static int wss_start(app *a, void **state)
{
    wss_node *n = calloc(1, sizeof *n);
    if (!n)
        return CHORUS_ERR;
    *state = n;
    n->app = a;
    n->cfg = app_config(a);
    n->node_id = app_node_id(a);
    n->secret_len = strlen(n->cfg->jwt_secret);
    wss_metrics(n);
    n->pg = app_pg(a);
    n->http = app_http(a, n->cfg->wss_port);
    if (!n->http || !n->pg)
        return CHORUS_ERR;
    /* A member's channels; deleted channels deliver nothing. Bounded like a user's
     * memberships can reasonably be. */
    if (pgpool_prepare(n->pg, "wss_channels",
                       "SELECT m.channel_id FROM channel_members m"
                       "  JOIN channels c ON c.id = m.channel_id"
                       " WHERE m.user_id = $1 AND c.deleted_at IS NULL LIMIT 10000") !=
        CHORUS_OK)
        return CHORUS_ERR;
    if (pgpool_prepare(n->pg, "wss_resume", wss_resume_sql) != CHORUS_OK)
        return CHORUS_ERR;
    n->fanout = wss_fanout_new(n);
    if (!n->fanout)
        return CHORUS_ERR;
    httpd_set_ws_handler(n->http, wss_session_callback, n);
    log_info("wss: node %s accepts WebSocket sessions on port %d", n->node_id,
             n->cfg->wss_port);
    return CHORUS_OK;
}

static void wss_stop(void *state)
{
    wss_node *n = state;
    n->draining = true;
    wss_fanout_stop(n->fanout);
}

static void wss_free(void *state)
{
    wss_node *n = state;
    if (!n)
        return;
    wss_fanout_free(n->fanout);
    free(n);
}

const role_def wss_role = {
    .name = "wss",
    .needs_pg = true,
    .needs_redis = true,
    .start = wss_start,
    .stop = wss_stop,
    .free = wss_free,
};
