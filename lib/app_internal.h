/* app_internal.h - the app struct, shared by app.c, app_run.c, app_admin.c, seed.c. */
#ifndef CHORUS_APP_INTERNAL_H
#define CHORUS_APP_INTERNAL_H

#include <libpq-fe.h>

#include "chorus/app.h"

#define CHORUS_VERSION "0.1.0"
#define APP_MAX_ROLES 8
#define APP_MAX_LISTENERS 4

struct lws_context;

struct app {
    chorus_config cfg;
    struct ev_loop *loop;
    struct lws_context *lws;
    const role_def *roles[APP_MAX_ROLES];
    void *role_state[APP_MAX_ROLES];
    int nroles;
    int nstarted;
    httpd *http[APP_MAX_LISTENERS];
    int nhttp;
    pgpool *pg;
    rclient *redis;
    struct knocker *knock; /* on redis: app_outbox_knock */
    char node_id[128];
    ev_signal sigterm, sigint;
    ev_timer deadline;   /* forces the loop to end if shutdown stalls */
    ev_timer drain;      /* polls the roles' drained() before the stop proper */
    double drain_until;
    bool draining;
    bool stopping;
    double started_at;   /* unix time, for process_start_time_seconds */
    ev_timer lag_tick;   /* chorus_event_loop_lag_seconds (app_admin.c) */
    double lag_due;      /* when lag_tick is due, in ev_time() */
    struct metrics_series *m_loop_lag;
};

/* Runs the selected roles until SIGTERM/SIGINT; returns the exit status. */
int app_run(app *a);
/* Frees everything app_main allocated (NULL is fine). */
void app_free(app *a);
/* Mounts /metrics, /healthz, /readyz on a listener. */
void app_admin_routes(app *a, httpd *h);
/* Registers process-wide metrics (memory, fds, start time, build info). */
void app_process_metrics(app *a);
/* Registers chorus_event_loop_lag_seconds and starts its timer; app_run calls it once
 * the roles have started, so the start-up is not counted (app_stop stops it). */
void app_loop_lag_start(app *a);
/* `chorus seed-demo`: returns the exit status. */
int app_seed_demo(const chorus_config *cfg);
/* seed_load.c: `chorus seed-load USERS CHANNELS MEMBERS` (argv: those three). */
int app_seed_load(const chorus_config *cfg, int argc, char **argv);
/* One statement of a command-line tool (seed.c): its result, or NULL after logging
 * "<who>: <error>"; app_sql_run is the same for a statement whose rows nobody reads. */
PGresult *app_sql(PGconn *c, const char *who, const char *sql, int n,
                  const char *const *params);
int app_sql_run(PGconn *c, const char *who, const char *sql, int n, const char *const *params);
/* `chorus check-streams` (stream_check.c): 0 whole, 1 a gap or disorder, 2 no Redis. */
int app_check_streams(const chorus_config *cfg);

#endif
