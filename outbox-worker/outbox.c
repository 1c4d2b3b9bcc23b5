/* outbox.c - the outbox role: publishes the Postgres outbox to the partitioned Redis
 * streams (docs/OUTBOX.md). Lifecycle and metrics here; the batches are in
 * outbox_lane.c, the leases and housekeeping in outbox_lease.c.
 *
 * The role has its own Postgres pool and Redis client rather than the app's shared ones:
 * on SIGTERM it finishes the batches under way, deletes its lease row and only then lets
 * its clients go, while the app frees the shared clients at once.
 */
#include "outbox.h"

#include <stdio.h>
#include <stdlib.h>

#include "chorus/health.h"
#include "chorus/log.h"
#include "chorus/metrics.h"
#include "chorus/pgpool.h"
#include "chorus/rclient.h"
#include "chorus/status.h"
#include "outbox_internal.h"

static const double lag_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1,
                                    0.25,  0.5,    1,     2.5,  5,    10,  30};
static const double batch_bounds[] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000};

static void outbox_metrics(outbox_worker *w)
{
    w->m_lag = metrics_series_get(
        metrics_family_new(METRICS_HISTOGRAM, "chorus_outbox_lag_seconds",
                           "time from an outbox row's creation to its commit as published",
                           NULL, lag_bounds, sizeof lag_bounds / sizeof lag_bounds[0]),
        NULL);
    w->m_batch_rows = metrics_series_get(
        metrics_family_new(METRICS_HISTOGRAM, "chorus_outbox_batch_rows",
                           "rows published per batch", NULL, batch_bounds,
                           sizeof batch_bounds / sizeof batch_bounds[0]),
        NULL);
    w->m_batch_seconds = metrics_histogram("chorus_outbox_batch_seconds",
                                           "duration of a publishing batch, BEGIN to COMMIT");
    w->m_events = metrics_counter("chorus_outbox_events_total", "outbox rows published");
    w->m_entries = metrics_counter("chorus_outbox_stream_entries_total",
                                   "stream entries appended (an event aimed at users "
                                   "goes to each of their partitions)");
    w->m_looks = metrics_counter("chorus_outbox_looks_total",
                                 "queries for the partitions with unpublished rows, made by "
                                 "idle lanes and knocks");
    metrics_family *batches = metrics_family_new(
        METRICS_COUNTER, "chorus_outbox_batches_total",
        "publishing batches by what they found (a failed one is in chorus_outbox_errors_total)",
        "result", NULL, 0);
    w->m_batches_published = metrics_with1(batches, "published");
    w->m_batches_empty = metrics_with1(batches, "empty");
    metrics_family *err = metrics_family_new(METRICS_COUNTER, "chorus_outbox_errors_total",
                                             "failed batches and queries by cause", "kind",
                                             NULL, 0);
    w->m_err_pg = metrics_with1(err, "postgres");
    w->m_err_redis = metrics_with1(err, "redis");
    w->m_err_encode = metrics_with1(err, "encode");
    w->m_owned = metrics_gauge("chorus_outbox_partitions_owned",
                               "partitions this worker publishes");
    w->m_live = metrics_gauge("chorus_outbox_workers_live",
                              "live outbox workers as this one last saw them");
    w->m_backlog = metrics_gauge("chorus_outbox_backlog",
                                 "unpublished rows of this worker's partitions (counted up "
                                 "to 10000)");
    w->m_oldest = metrics_gauge("chorus_outbox_oldest_unpublished_seconds",
                                "age of the oldest unpublished row of this worker's "
                                "partitions (gate: > 5)");
    w->m_trimmed = metrics_counter("chorus_outbox_retention_deleted_total",
                                   "published rows deleted after the retention window");
}

static bool outbox_ready(void *arg)
{
    outbox_worker *w = arg;
    return w->pg && pgpool_ready(w->pg) && w->redis && rclient_connected(w->redis) &&
           w->rank >= 0;
}

static int outbox_clients(outbox_worker *w)
{
    const chorus_config *c = w->cfg;
    pgpool_opts po = {.conninfo = c->database_url,
                      .name = "outbox",
                      .size = w->nlanes + 1,
                      .queue_max = 64,
                      .connect_timeout_ms = c->pg_connect_timeout_ms,
                      .backoff_min_ms = 100,
                      .backoff_max_ms = 5000};
    w->pg = pgpool_new(w->loop, &po);
    if (!w->pg || outbox_lease_prepare(w) != CHORUS_OK)
        return CHORUS_ERR;
    rclient_opts ro = {.url = c->redis_url,
                       .name = "outbox",
                       .max_pending = w->nlanes * (w->max_commands + 1), /* + the bell */
                       .backoff_min_ms = 50,
                       .backoff_max_ms = 2000,
                       .command_timeout_ms = 5000};
    w->redis = rclient_new(w->loop, &ro);
    return w->redis ? outbox_knock_start(w) : CHORUS_ERR;
}

static int outbox_start(app *a, void **state)
{
    outbox_worker *w = calloc(1, sizeof *w);
    if (!w)
        return CHORUS_ERR;
    *state = w;
    w->app = a;
    w->cfg = app_config(a);
    w->loop = app_loop(a);
    w->node_id = app_node_id(a);
    w->nlanes = w->cfg->outbox_lanes;
    w->rank = -1;
    /* One batch's commands: a row per batch slot (an XADD, or a version bump and an
     * XADD), plus room for one event aimed at users in every partition, so that no
     * single row can exceed the bound on its own. */
    w->max_commands = w->cfg->outbox_batch * 2 + w->cfg->partitions + 1;
    snprintf(w->maxlen, sizeof w->maxlen, "%d", w->cfg->stream_maxlen);
    w->owned = calloc((size_t)w->cfg->partitions, sizeof *w->owned);
    if (!w->owned)
        return CHORUS_ERR;
    outbox_metrics(w);
    if (outbox_lanes_init(w) != CHORUS_OK || outbox_clients(w) != CHORUS_OK)
        return CHORUS_ERR;
    if (health_register("outbox", outbox_ready, w) != CHORUS_OK)
        return CHORUS_ERR;
    outbox_lease_start(w);
    log_info("outbox: node %s, %d partitions, %d lane(s) of up to %d rows", w->node_id,
             w->cfg->partitions, w->nlanes, w->cfg->outbox_batch);
    return CHORUS_OK;
}

void outbox_lane_idle(outbox_worker *w)
{
    if (w->stopping && !w->hk_busy && outbox_lanes_quiet(w))
        outbox_lease_leave(w);
}

static void outbox_stop(void *state)
{
    outbox_worker *w = state;
    w->stopping = true;
    ev_timer_stop(w->loop, &w->beat);
    outbox_lane_idle(w);
}

static void outbox_free(void *state)
{
    outbox_worker *w = state;
    if (!w)
        return;
    health_unregister(w);
    if (w->loop)
        ev_timer_stop(w->loop, &w->beat);
    outbox_free_clients(w); /* still there if the stop deadline cut the loop short */
    outbox_lanes_free(w);
    free(w->owned);
    free(w);
}

const role_def outbox_role = {
    .name = "outbox",
    .needs_pg = false, /* its own pool and client: see the top of this file */
    .needs_redis = false,
    .start = outbox_start,
    .stop = outbox_stop,
    .free = outbox_free,
};
