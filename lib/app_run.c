/* app_run.c - `chorus run`: start the roles on one libev loop and shut down cleanly. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <libwebsockets.h>

#include "app_internal.h"
#include "chorus/health.h"
#include "chorus/httpd.h"
#include "chorus/knock.h"
#include "chorus/log.h"
#include "chorus/metrics.h"
#include "chorus/pgpool.h"
#include "chorus/rclient.h"
#include "chorus/status.h"

static bool pg_ready(void *arg) { return pgpool_ready(arg); }
static bool redis_ready(void *arg) { return rclient_connected(arg); }

/* A WebSocket node's capacity comes from the open-files limit: take the hard limit. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            log_warn("cannot raise the open-files limit to %lu", (unsigned long)rl.rlim_max);
    }
}

static int create_lws(app *a)
{
    int levels = LLL_ERR | LLL_WARN;
    if (log_enabled(LOG_LVL_DEBUG))
        levels |= LLL_NOTICE;
    lws_set_log_level(levels, log_lws_emit);

    void *loops[] = {a->loop};
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS | LWS_SERVER_OPTION_LIBEV;
    info.foreign_loops = loops;
    info.port = CONTEXT_PORT_NO_LISTEN;
    /* lws 4.1 on a foreign libev loop frees the context inside the first
     * lws_context_destroy(); pcontext makes it clear our pointer when it does. */
    info.pcontext = &a->lws;
    a->lws = lws_create_context(&info);
    if (!a->lws) {
        log_error("cannot create the libwebsockets context (is the package "
                  "libwebsockets-evlib-ev installed?)");
        return CHORUS_ERR;
    }
    return CHORUS_OK;
}

static int create_clients(app *a)
{
    bool pg = false, redis = false;
    for (int i = 0; i < a->nroles; i++) {
        pg |= a->roles[i]->needs_pg;
        redis |= a->roles[i]->needs_redis;
    }
    if (pg) {
        pgpool_opts o = {
            .conninfo = a->cfg.database_url,
            .name = "main",
            .size = a->cfg.pg_pool_size,
            .queue_max = a->cfg.pg_queue_max,
            .connect_timeout_ms = a->cfg.pg_connect_timeout_ms,
            .backoff_min_ms = 100,
            .backoff_max_ms = 5000,
        };
        a->pg = pgpool_new(a->loop, &o);
        if (!a->pg)
            return CHORUS_ERR;
        health_register("postgres", pg_ready, a->pg);
    }
    if (redis) {
        rclient_opts o = {
            .url = a->cfg.redis_url,
            .name = "main",
            .max_pending = a->cfg.redis_max_pending,
            .backoff_min_ms = 100,
            .backoff_max_ms = 5000,
        };
        a->redis = rclient_new(a->loop, &o);
        a->knock = a->redis ? knocker_new(a->redis) : NULL;
        if (!a->redis || !a->knock)
            return CHORUS_ERR;
        health_register("redis", redis_ready, a->redis);
    }
    return CHORUS_OK;
}

static int start_roles(app *a)
{
    for (int i = 0; i < a->nroles; i++) {
        if (a->roles[i]->start(a, &a->role_state[i]) != CHORUS_OK) {
            log_error("role %s failed to start", a->roles[i]->name);
            /* A role that failed half-way may have set its state: free it here, as it
             * does not count among the started roles that app_free frees. */
            if (a->role_state[i] && a->roles[i]->free)
                a->roles[i]->free(a->role_state[i]);
            a->role_state[i] = NULL;
            return CHORUS_ERR;
        }
        a->nstarted = i + 1;
        log_info("role %s started", a->roles[i]->name);
    }
    if (a->nhttp == 0) {
        if (a->cfg.admin_port == 0) {
            log_error("roles '%s' serve no HTTP: set CHORUS_ADMIN_PORT for /metrics and "
                      "/readyz", a->cfg.roles);
            return CHORUS_ERR;
        }
    }
    if (a->cfg.admin_port && !app_http(a, a->cfg.admin_port))
        return CHORUS_ERR;
    return CHORUS_OK;
}

static void on_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    (void)w;
    log_warn("shutdown took longer than the deadline: ending the loop");
    ev_break(loop, EVBREAK_ALL);
}

/* Stops the roles, then lets go of every shared watcher so ev_run can return. */
static void app_stop(app *a)
{
    if (a->stopping)
        return;
    a->stopping = true;
    log_info("shutting down");
    for (int i = 0; i < a->nhttp; i++)
        httpd_drain(a->http[i]);
    for (int i = a->nstarted - 1; i >= 0; i--)
        if (a->roles[i]->stop)
            a->roles[i]->stop(a->role_state[i]);
    ev_signal_stop(a->loop, &a->sigterm);
    ev_signal_stop(a->loop, &a->sigint);
    ev_timer_stop(a->loop, &a->lag_tick);
    /* The deadline must not keep the loop alive by itself: unref it. */
    ev_timer_init(&a->deadline, on_deadline, a->cfg.shutdown_timeout_ms / 1000.0, 0);
    ev_timer_start(a->loop, &a->deadline);
    ev_unref(a->loop);
    if (a->pg) {
        health_unregister(a->pg);
        pgpool_free(a->pg);
        a->pg = NULL;
    }
    if (a->redis) {
        health_unregister(a->redis);
        rclient_free(a->redis);
        a->redis = NULL;
    }
    knocker_free(a->knock); /* after the client: its reply callback has run */
    a->knock = NULL;
    lws_context_destroy(a->lws); /* with a foreign loop: begins closing, loop finishes it */
}

static bool roles_drained(app *a)
{
    for (int i = 0; i < a->nstarted; i++)
        if (a->roles[i]->drained && !a->roles[i]->drained(a->role_state[i]))
            return false;
    return true;
}

static void on_drain_poll(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    app *a = w->data;
    if (!roles_drained(a) && ev_now(loop) < a->drain_until)
        return;
    ev_timer_stop(loop, w);
    app_stop(a);
}

/* SIGTERM: the roles that hand clients over drain first (bounded), then all stop. */
static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)revents;
    app *a = w->data;
    if (a->draining || a->stopping)
        return;
    a->draining = true;
    log_info("draining");
    for (int i = 0; i < a->nstarted; i++)
        if (a->roles[i]->drain)
            a->roles[i]->drain(a->role_state[i]);
    a->drain_until = ev_now(loop) + a->cfg.shutdown_timeout_ms / 2000.0;
    ev_timer_init(&a->drain, on_drain_poll, 0, 0.02);
    a->drain.data = a;
    ev_timer_start(loop, &a->drain);
}

static void init_identity(app *a)
{
    if (a->cfg.node_id[0]) {
        snprintf(a->node_id, sizeof a->node_id, "%s", a->cfg.node_id);
    } else {
        char host[64] = "host";
        gethostname(host, sizeof host - 1);
        snprintf(a->node_id, sizeof a->node_id, "%s-%d", host, (int)getpid());
    }
    log_set_node(a->node_id);
    a->started_at = (double)time(NULL);
}

int app_run(app *a)
{
    char err[512];
    if (config_validate(&a->cfg, err, sizeof err) != CHORUS_OK) {
        log_error("configuration: %s", err);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    init_identity(a);
    a->loop = ev_default_loop(EVFLAG_AUTO);
    app_process_metrics(a);
    ev_signal_init(&a->sigterm, on_signal, SIGTERM);
    ev_signal_init(&a->sigint, on_signal, SIGINT);
    a->sigterm.data = a->sigint.data = a;
    ev_signal_start(a->loop, &a->sigterm);
    ev_signal_start(a->loop, &a->sigint);

    int rc = 0;
    if (create_lws(a) != CHORUS_OK || create_clients(a) != CHORUS_OK ||
        start_roles(a) != CHORUS_OK) {
        rc = 1;
        app_stop(a);
    } else {
        log_info("node %s running roles %s", a->node_id, a->cfg.roles);
        app_loop_lag_start(a);
    }
    ev_run(a->loop, 0);
    if (a->stopping) {
        ev_ref(a->loop);
        ev_timer_stop(a->loop, &a->deadline);
    }
    /* Normally a no-op (a->lws is NULL by now, see create_lws); it finishes a destroy
     * that lws had to defer because it was inside its own service. */
    lws_context_destroy(a->lws);
    a->lws = NULL;
    log_info("stopped");
    return rc;
}

void app_free(app *a)
{
    if (!a)
        return;
    for (int i = a->nstarted - 1; i >= 0; i--)
        if (a->roles[i]->free)
            a->roles[i]->free(a->role_state[i]);
    for (int i = 0; i < a->nhttp; i++)
        httpd_free(a->http[i]);
    knocker_free(a->knock);
    if (a->loop)
        ev_loop_destroy(a->loop);
    health_reset();
    metrics_reset();
    config_free(&a->cfg);
    free(a);
}
