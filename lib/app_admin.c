/* app_admin.c - the routes every process serves: /metrics, /healthz, /readyz. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "app_internal.h"
#include "chorus/health.h"
#include "chorus/httpd.h"
#include "chorus/metrics.h"
#include "chorus/status.h"

static void get_metrics(http_req *r, void *arg)
{
    (void)arg;
    buf out;
    buf_init(&out, 64 << 20);
    if (metrics_render(&out) != CHORUS_OK) {
        buf_free(&out);
        http_respond_error(r, 500, "internal", "metrics too large to render");
        return;
    }
    http_respond(r, 200, "text/plain; version=0.0.4; charset=utf-8", out.data ? out.data : "",
                 out.len);
    buf_free(&out);
}

static void get_healthz(http_req *r, void *arg)
{
    app *a = arg;
    json_t *j = json_pack("{s:s, s:s}", "status", "ok", "node", app_node_id(a));
    http_respond_json(r, 200, j);
}

static void get_readyz(http_req *r, void *arg)
{
    (void)arg;
    buf out;
    buf_init(&out, 65536);
    bool ready = health_ready(&out);
    http_respond(r, ready ? 200 : 503, "application/json", out.data ? out.data : "{}", out.len);
    buf_free(&out);
}

void app_admin_routes(app *a, httpd *h)
{
    httpd_route(h, "GET", "/metrics", get_metrics, a);
    httpd_route(h, "GET", "/healthz", get_healthz, a);
    httpd_route(h, "GET", "/readyz", get_readyz, a);
}

static double resident_bytes(void *arg)
{
    (void)arg;
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, rss = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
            rss = 0;
        fclose(f);
    }
    return (double)rss * (double)sysconf(_SC_PAGESIZE);
}

/* Linux 6.2 and later give the count as the size of /proc/self/fd. Older kernels need
 * the directory read, which builds a dentry per open file: 3 % of a WSS node's CPU at
 * 15,000 sessions and a scrape a second, so that count is kept for a few seconds. */
#define OPEN_FDS_CACHE_S 5

static double open_fds(void *arg)
{
    (void)arg;
    struct stat st;
    if (stat("/proc/self/fd", &st) == 0 && st.st_size > 0)
        return (double)st.st_size;
    static double counted, at;
    time_t now = time(NULL);
    if (at > 0 && (double)now - at < OPEN_FDS_CACHE_S)
        return counted;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return 0;
    double n = 0;
    for (struct dirent *e = readdir(d); e; e = readdir(d))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    counted = n - 1; /* the directory's own fd */
    at = (double)now;
    return counted;
}

static double start_time(void *arg)
{
    return ((app *)arg)->started_at;
}

/* How late the loop runs a timer due every LOOP_LAG_PERIOD_S: what every event of the
 * process waits past its time while the loop is busy in callbacks or the process waits
 * for a core. The scaler went blind for 17 s in a load test because its process was
 * starved, and nothing said so (docs/OPERATIONS.md). */
#define LOOP_LAG_PERIOD_S 0.1
static const double loop_lag_bounds[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1,
                                         0.25,  0.5,   1,    2.5,   5,    10};

static void on_lag_tick(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    app *a = t->data;
    double late = ev_time() - a->lag_due;
    metrics_observe(a->m_loop_lag, late > 0 ? late : 0);
    a->lag_due = ev_now(loop) + LOOP_LAG_PERIOD_S; /* libev counts from the loop's time */
    ev_timer_set(t, LOOP_LAG_PERIOD_S, 0);
    ev_timer_start(loop, t);
}

void app_loop_lag_start(app *a)
{
    a->m_loop_lag = metrics_series_get(
        metrics_family_new(METRICS_HISTOGRAM, "chorus_event_loop_lag_seconds",
                           "how late the event loop ran a timer due every 100 ms", NULL,
                           loop_lag_bounds, sizeof loop_lag_bounds / sizeof loop_lag_bounds[0]),
        NULL);
    ev_timer_init(&a->lag_tick, on_lag_tick, LOOP_LAG_PERIOD_S, 0);
    a->lag_tick.data = a;
    ev_now_update(a->loop); /* the start-up's time is not lag */
    a->lag_due = ev_now(a->loop) + LOOP_LAG_PERIOD_S;
    ev_timer_start(a->loop, &a->lag_tick);
}

void app_process_metrics(app *a)
{
    metrics_gauge_func("process_resident_memory_bytes", "Resident memory size in bytes",
                       resident_bytes, NULL);
    metrics_gauge_func("process_open_fds", "Number of open file descriptors", open_fds, NULL);
    metrics_gauge_func("process_start_time_seconds",
                       "Start time of the process since unix epoch in seconds", start_time, a);
    metrics_family *info = metrics_family_new(METRICS_GAUGE, "chorus_build_info",
                                              "Chorus version and the roles this process runs",
                                              "version,roles", NULL, 0);
    metrics_set(metrics_with2(info, CHORUS_VERSION, a->cfg.roles), 1);
}
