/* wss.c - the fungible WebSocket node (DESIGN.md, API.md "WebSocket"): its listener
 * (which also serves the node's admin routes), its sessions (wss_session.c), the
 * delivery of the channel streams to them (wss_fanout.c) and its metrics. */
#include "wss.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chorus/httpd.h"
#include "chorus/log.h"
#include "chorus/pgpool.h"
#include "chorus/rclient.h"
#include "chorus/status.h"
#include "chorus/wssreg.h"
#include "wss_internal.h"
#include "wss_members.h"

static void wss_metrics(wss_node *n)
{
    n->m_sessions = metrics_gauge("chorus_wss_connections", "open WebSocket sessions");
    n->m_closes_slow = metrics_counter("chorus_wss_slow_consumer_closes_total",
                                       "sessions closed with 4008: outbound queue full");
    n->m_frames_out = metrics_counter("chorus_wss_frames_sent_total", "frames written");
    n->m_bytes_queued = metrics_gauge("chorus_wss_outbound_queued_bytes",
                                      "bytes queued for sessions, not yet written");
    n->m_registry_errors = metrics_counter("chorus_wss_registry_errors_total",
                                           "failed writes of the node registry");
    n->m_closes_idle = metrics_counter("chorus_wss_idle_closes_total",
                                       "sessions closed after two heartbeats of silence");
    metrics_family *lat = metrics_family_new(
        METRICS_HISTOGRAM, "chorus_wss_delivery_latency_seconds",
        "event created (outbox row) to its frame written to the socket", NULL, NULL, 0);
    n->m_latency = metrics_series_get(lat, NULL);
    metrics_family *res = metrics_family_new(METRICS_COUNTER, "chorus_wss_resumes_total",
                                             "channels resumed, by where the events came from",
                                             "source", NULL, 0);
    n->m_resume_buffer = metrics_with1(res, "buffer");
    n->m_resume_pg = metrics_with1(res, "postgres");
    n->m_resume_far = metrics_with1(res, "too_far");
    n->m_resume_failed = metrics_counter(
        "chorus_wss_resume_failures_total",
        "resumes and catch-ups Postgres did not answer: the session was closed with 1013");
    n->m_sends = metrics_counter("chorus_wss_sends_total", "send ops acknowledged");
    n->m_send_errors = metrics_counter("chorus_wss_send_errors_total",
                                       "send ops answered with an error");
}

/* ---- the node registry --------------------------------------------------------------
 * Every second, and sooner when its sessions move fast (below), the node writes
 * chorus:wss:node:<id> (a hash: url, connections, capacity, events_per_s, draining,
 * updated_ms) with a WSSREG_RECENT_MS (5 s) expiry, and its id into the sorted set
 * chorus:wss:nodes scored by that time; the gateway (issue 6) reads the nodes from there:
 * live when written in the last 3 s, stalled (a last resort) up to the expiry. */

static void on_registered(void *arg, redisReply *reply)
{
    wss_node *n = arg;
    if (!reply || reply->type == REDIS_REPLY_ERROR)
        metrics_inc(n->m_registry_errors);
}

static void registry_write(wss_node *n)
{
    rclient *r = app_redis(n->app);
    if (!r || !rclient_connected(r))
        return;
    char key[160], url[200], conns[24], cap[24], eps[32], now[32], pid[16];
    snprintf(key, sizeof key, "chorus:wss:node:%s", n->node_id);
    snprintf(url, sizeof url, "ws://%s:%d/ws", n->cfg->public_host, n->cfg->wss_port);
    snprintf(conns, sizeof conns, "%d", n->sessions);
    snprintf(cap, sizeof cap, "%d", n->capacity);
    snprintf(eps, sizeof eps, "%.1f", n->events_per_s);
    n->registered_sessions = n->sessions;
    snprintf(now, sizeof now, "%.0f", ev_now(app_loop(n->app)) * 1000);
    snprintf(pid, sizeof pid, "%d", (int)getpid()); /* for operators of one host */
    const char *hset[] = {"HSET", key, "url", url, "connections", conns, "capacity", cap,
                          "events_per_s", eps, "draining", n->draining ? "1" : "0",
                          "updated_ms", now, "pid", pid};
    rclient_command_argv(r, on_registered, n, 16, hset, NULL);
    rclient_command(r, on_registered, n, "PEXPIRE %s %d", key, WSSREG_RECENT_MS);
    rclient_command(r, on_registered, n, "ZADD chorus:wss:nodes %s %s", now, n->node_id);
}

/* ---- shedding: the scaler evens the load (gateway/scaler.c) ------------------------- */

#define SHED_MAX 100
/* The moves a round asks for are spread over most of the scaler's round (3 s), a
 * tick at a time: each move is a reconnect, a channel load and a resume, and 300 of
 * them at once every round were the latency spikes of the 100k load test. */
#define SHED_TICK_S 0.1
#define SHED_SPREAD_S 2.5

/* One tick's moves: the newest sessions first, as they have the least to resume. */
static void on_shed_tick(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    wss_node *n = t->data;
    int done = 0;
    for (wss_session *s = n->all; s && done < n->shed_step && done < n->shed_left; s = s->next)
        if (!s->drain && !s->close_code) {
            wss_session_drain(s, "rebalance");
            done++;
        }
    n->shed_left -= done;
    if (n->shed_left <= 0 || done == 0 || n->draining)
        ev_timer_stop(loop, t);
}

static void on_shed(void *arg, redisReply *reply)
{
    wss_node *n = arg;
    if (!reply || reply->type != REDIS_REPLY_STRING || n->draining)
        return;
    int want = atoi(reply->str);
    if (want <= 0)
        return;
    if (want > SHED_MAX)
        want = SHED_MAX; /* the rest next time, if the scaler still asks */
    int ticks = (int)(SHED_SPREAD_S / SHED_TICK_S);
    n->shed_left = want; /* a new round's count replaces what is left of the last */
    n->shed_step = (want + ticks - 1) / ticks;
    ev_timer_stop(app_loop(n->app), &n->shed);
    ev_timer_set(&n->shed, 0, SHED_TICK_S);
    ev_timer_start(app_loop(n->app), &n->shed);
    log_info("wss: shedding %d sessions for the scaler over %.1f s (%d asked)", want,
             SHED_SPREAD_S, atoi(reply->str));
}

/* A count the scaler left for this node: that many sessions move elsewhere. */
static void shed_check(wss_node *n)
{
    rclient *r = app_redis(n->app);
    if (r && rclient_connected(r))
        rclient_command(r, on_shed, n, "GETDEL chorus:wss:shed:%s", n->node_id);
}

static void on_registry_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    wss_node *n = t->data;
    if (!n->ready)
        return; /* the gateway sends clients only to a node that takes them */
    double events = wss_fanout_events(n->fanout);
    n->events_per_s = events - n->last_events;
    n->last_events = events;
    registry_write(n);
    wss_presence_sweep(n);
    shed_check(n);
    wss_fanout_repair(n->fanout);
}

/* Between the writes of each second, one as soon as the sessions moved by 1 % of the
 * capacity (at most every REGISTRY_SOON_S): the scaler and the gateway decide from this
 * figure. In the 100k load test's ramp (2,000 sessions a second onto one node) the
 * scaler's 20 % headroom is 1.8 s, and a second of lag here, on a busy host, let the
 * first node fill and refuse before its second replica was started. */
#define REGISTRY_SOON_S 0.1

static void on_registry_soon(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    wss_node *n = t->data;
    int step = n->capacity >= 200 ? n->capacity / 100 : 1;
    if (n->ready && abs(n->sessions - n->registered_sessions) >= step)
        registry_write(n);
}

/* The node takes sessions once it reads every user partition (membership changes). */
static void on_starting(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    wss_node *n = t->data;
    if (!n->fanout || !wss_fanout_ready(n->fanout))
        return;
    n->ready = true;
    ev_timer_stop(loop, t);
    registry_write(n);
    log_info("wss: node %s reads the user streams: taking sessions", n->node_id);
}

/* How many sessions the node takes: max_connections, else the listener's ceiling (the
 * files left after the pool and Redis, lib/httpd.c) less room for /metrics, health
 * checks and upgrades refused with 4009. */
static int node_capacity(const chorus_config *cfg, const httpd *http)
{
    if (cfg->max_connections > 0)
        return cfg->max_connections;
    int ceiling = httpd_fd_ceiling(http);
    if (ceiling == INT_MAX)
        return 15000;
    return ceiling > 129 ? ceiling - 128 : 1;
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
    if (wss_members_init(n) != CHORUS_OK ||
        pgpool_prepare(n->pg, "wss_presence_peers", wss_presence_peers_sql) != CHORUS_OK)
        return CHORUS_ERR;
    if (wss_resume_init(n) != CHORUS_OK ||
        pgpool_prepare(n->pg, "wss_send", wss_send_sql) != CHORUS_OK)
        return CHORUS_ERR;
    n->writes = ratelimit_new(n->cfg->rate_limit_per_s, n->cfg->rate_limit_burst, 100000);
    if (!n->writes)
        return CHORUS_ERR;
    n->fanout = wss_fanout_new(n);
    if (!n->fanout)
        return CHORUS_ERR;
    httpd_set_ws_handler(n->http, wss_session_callback, n);
    n->capacity = node_capacity(n->cfg, n->http);
    wss_presence_init(n);
    ev_timer_init(&n->starting, on_starting, 0, 0.05);
    n->starting.data = n;
    ev_timer_start(app_loop(a), &n->starting);
    ev_timer_init(&n->registry, on_registry_timer, 0, 1.0);
    n->registry.data = n;
    ev_timer_init(&n->registry_soon, on_registry_soon, REGISTRY_SOON_S, REGISTRY_SOON_S);
    n->registry_soon.data = n;
    ev_timer_init(&n->shed, on_shed_tick, 0, SHED_TICK_S);
    n->shed.data = n;
    ev_timer_start(app_loop(a), &n->registry);
    ev_timer_start(app_loop(a), &n->registry_soon);
    log_info("wss: node %s accepts up to %d WebSocket sessions on port %d", n->node_id,
             n->capacity, n->cfg->wss_port);
    return CHORUS_OK;
}

/* Out of the registry, so the gateway sends nobody here any more. */
static void deregister(wss_node *n)
{
    ev_timer_stop(app_loop(n->app), &n->starting);
    ev_timer_stop(app_loop(n->app), &n->registry);
    ev_timer_stop(app_loop(n->app), &n->registry_soon);
    ev_timer_stop(app_loop(n->app), &n->shed);
    rclient *r = app_redis(n->app);
    if (r && rclient_connected(r)) {
        rclient_command(r, on_registered, n, "DEL chorus:wss:node:%s", n->node_id);
        rclient_command(r, on_registered, n, "ZREM chorus:wss:nodes %s", n->node_id);
    }
}

/* SIGTERM: deregister, refuse new sessions, stop reading (what the sessions miss from
 * now on they resume elsewhere), write out every queue, then close each session with
 * 4009 so its client reconnects through the gateway. */
static void wss_drain(void *state)
{
    wss_node *n = state;
    n->draining = true;
    deregister(n);
    wss_fanout_stop(n->fanout);
    log_info("wss: draining %d sessions", n->sessions);
    for (wss_session *s = n->all; s; s = s->next)
        wss_session_drain(s, "draining");
}

static bool wss_drained(void *state)
{
    return ((wss_node *)state)->sessions == 0;
}

static void wss_stop(void *state)
{
    wss_node *n = state;
    n->draining = true;
    deregister(n);
    wss_presence_flush(n);
    wss_fanout_stop(n->fanout);
    wss_members_stop(n);
    wss_resume_stop(n);
}

static void wss_free(void *state)
{
    wss_node *n = state;
    if (!n)
        return;
    wss_fanout_free(n->fanout);
    wss_members_free(n);
    wss_resume_free(n);
    ratelimit_free(n->writes);
    free(n->presence_filling); /* a start that failed before its stop */
    free(n);
}

const role_def wss_role = {
    .name = "wss",
    .needs_pg = true,
    .needs_redis = true,
    .start = wss_start,
    .drain = wss_drain,
    .drained = wss_drained,
    .stop = wss_stop,
    .free = wss_free,
};
