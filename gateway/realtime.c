/* realtime.c - POST /api/v1/realtime/connect (API.md): which WSS node a client opens
 * its WebSocket on.
 *
 * The gateway polls the node registry every 200 ms (lib/wssreg.c) and answers from that
 * view, without a Redis round trip per request: among live nodes (entry at most 3 s
 * old, not draining, with room) the one with the lowest connection load (connections
 * plus the clients this gateway sent there since the node's last write, over capacity),
 * then the lowest event throughput. The answer carries the node's URL and id and a
 * fresh token for the upgrade. No node: 503 with Retry-After. While Redis does not
 * answer, the last view serves for up to 10 s.
 */
#include "realtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "chorus/jwt.h"
#include "chorus/metrics.h"
#include "chorus/log.h"
#include "chorus/status.h"
#include "chorus/wssreg.h"

#define POLL_MS 200
/* How long the last view may stand in for a fresh one while Redis does not answer: the
 * nodes in it most likely still run (a client sent to one that does not reconnects). */
#define TRUST_MS 10000

struct realtime {
    app *app;
    api *x;
    wssreg *reg;
    metrics_series *m_assigned, *m_unavailable;
};

const wssreg_node *realtime_pick(realtime *rt)
{
    return rt->reg ? wssreg_pick(rt->reg, ev_now(app_loop(rt->app)) * 1000) : NULL;
}

static void post_connect(http_req *r, void *arg)
{
    realtime *rt = arg;
    int64_t user;
    if (!api_authenticate(rt->x, r, &user))
        return;
    const wssreg_node *n = realtime_pick(rt);
    if (!n) {
        metrics_inc(rt->m_unavailable);
        http_req_add_header(r, "retry-after", "1");
        http_respond_error(r, 503, "unavailable", "no WebSocket node has room: retry shortly");
        return;
    }
    char token[1024];
    int64_t now = (int64_t)time(NULL);
    if (jwt_sign(rt->x->secret, rt->x->secret_len, user, now, now + rt->x->ttl_s, token,
                 sizeof token) != CHORUS_OK) {
        http_respond_error(r, 500, "internal", "could not sign a token");
        return;
    }
    metrics_inc(rt->m_assigned);
    json_t *body = json_pack("{s:s,s:s,s:s}", "url", n->url, "node", n->id, "token", token);
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (text)
        http_respond(r, 200, "application/json", text, strlen(text));
    else
        http_respond_error(r, 500, "internal", "out of memory");
    free(text);
}

realtime *realtime_new(app *a, api *x, httpd *h)
{
    realtime *rt = calloc(1, sizeof *rt);
    if (!rt)
        return NULL;
    rt->app = a;
    rt->x = x;
    rt->reg = wssreg_new(app_loop(a), app_redis(a), POLL_MS, TRUST_MS);
    rt->m_assigned = metrics_counter("chorus_realtime_assignments_total",
                                     "clients sent to a WSS node by /realtime/connect");
    rt->m_unavailable = metrics_counter("chorus_realtime_unavailable_total",
                                        "/realtime/connect answered 503: no node had room");
    if (!rt->reg ||
        httpd_route(h, "POST", API_PREFIX "/realtime/connect", post_connect, rt) != CHORUS_OK) {
        realtime_free(rt);
        return NULL;
    }
    return rt;
}

void realtime_stop(realtime *rt)
{
    if (!rt)
        return;
    wssreg_free(rt->reg); /* its timer would outlive the Redis client */
    rt->reg = NULL;
}

void realtime_free(realtime *rt)
{
    if (!rt)
        return;
    wssreg_free(rt->reg);
    free(rt);
}
