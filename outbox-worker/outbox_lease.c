/* outbox_lease.c - which partitions this worker owns, and the housekeeping that runs on
 * the same timer: the backlog gauges and the retention of published rows.
 *
 * Every lease/3 the worker renews its row in outbox_workers and reads the live set
 * (sql/004_outbox_workers.sql); outbox_assign turns the set into its partitions. One
 * housekeeping query is in flight at a time (hk_busy): beat, then, once a second, the
 * backlog of its partitions, then (rank 0 only) one retention batch.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "chorus/log.h"
#include "chorus/pgpool.h"
#include "chorus/rclient.h"
#include "chorus/status.h"
#include "outbox_internal.h"
#include "outbox_row.h"

#define STATS_PERIOD_S 5.0
#define TRIM_BATCH "5000"
#define TRIM_ROUNDS 20 /* batches per stats round at most: 50,000 rows a second */
#define MAX_LIVE 1024

static const struct {
    const char *name;
    const char *sql;
} lease_statements[] = {
    /* Renews the lease, forgets workers dead for 10 minutes, returns the live set (the
     * caller's own row counts even when this statement created it: a CTE's writes are
     * not visible to the rest of its statement). */
    {"outbox_beat",
     "WITH beat AS ("
     "  INSERT INTO outbox_workers (node_id, expires_at, partitions)"
     "  VALUES ($1, clock_timestamp() + make_interval(secs => $2::int / 1000.0), $3::int[])"
     "  ON CONFLICT (node_id) DO UPDATE"
     "    SET expires_at = EXCLUDED.expires_at, partitions = EXCLUDED.partitions),"
     " gone AS (DELETE FROM outbox_workers"
     "  WHERE expires_at < clock_timestamp() - interval '10 minutes' AND node_id <> $1)"
     " SELECT node_id FROM outbox_workers"
     "  WHERE expires_at > clock_timestamp() AND node_id <> $1"
     "  LIMIT 1024"},
    {"outbox_claim", "UPDATE outbox_workers SET partitions = $2::int[] WHERE node_id = $1"},
    {"outbox_leave", "DELETE FROM outbox_workers WHERE node_id = $1"},
};

/* The statements on outbox below go as text, planned each time with the table's size
 * of the moment (the lanes' mark too, outbox_lane.c): the table swings from
 * empty to an hour of events, and a plan prepared while it was small scans all of it
 * until an ANALYZE replans it. They run every few seconds; planning costs nothing there. */

/* Backlog (counted up to the cap) and the age of the oldest unpublished row of the
 * given partitions: one index probe per partition for the age. */
static const char backlog_sql[] =
    "SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox"
    "          WHERE published_at IS NULL AND partition_key = ANY($1::int[])"
    "          LIMIT 10000) b),"
    "       coalesce((SELECT extract(epoch FROM clock_timestamp() - min(f.created_at))"
    "                   FROM unnest($1::int[]) AS p, LATERAL ("
    "                     SELECT created_at FROM outbox"
    "                      WHERE published_at IS NULL AND partition_key = p"
    "                      ORDER BY id LIMIT 1) f), 0)";

/* Retention: of the oldest rows by id (ids are taken in creation order), those
 * published before the window. Only published rows are deleted, and so locked: a
 * lane's FOR UPDATE SKIP LOCKED never meets a row locked here. */
static const char trim_sql[] =
    "DELETE FROM outbox WHERE id IN ("
    "  SELECT id FROM (SELECT id, published_at FROM outbox ORDER BY id LIMIT $2::int) oldest"
    "   WHERE published_at < clock_timestamp() - make_interval(secs => $1::int))";

extern const char outbox_take_sql[], outbox_look_sql[];

int outbox_lease_prepare(outbox_worker *w)
{
    if (pgpool_prepare(w->pg, "outbox_take", outbox_take_sql) != CHORUS_OK ||
        pgpool_prepare(w->pg, "outbox_look", outbox_look_sql) != CHORUS_OK)
        return CHORUS_ERR;
    for (size_t i = 0; i < sizeof lease_statements / sizeof lease_statements[0]; i++)
        if (pgpool_prepare(w->pg, lease_statements[i].name, lease_statements[i].sql) !=
            CHORUS_OK)
            return CHORUS_ERR;
    return CHORUS_OK;
}

/* The owned partitions as an int[] literal (heap). */
static char *owned_literal(const outbox_worker *w)
{
    buf b;
    buf_init(&b, 0);
    buf_puts(&b, "{");
    for (int i = 0; i < w->nowned; i++)
        buf_printf(&b, "%s%d", i ? "," : "", w->owned[i]);
    buf_puts(&b, "}");
    return buf_steal(&b);
}

static void hk_done(outbox_worker *w)
{
    w->hk_busy = false;
    if (w->stopping)
        outbox_lane_idle(w);
}

/* Sets the owned partitions; true when they changed. */
static bool set_owned(outbox_worker *w, const int *parts, int n, int rank, int nlive)
{
    bool changed = n != w->nowned ||
                   (n > 0 && memcmp(parts, w->owned, (size_t)n * sizeof *parts) != 0);
    if (n > 0)
        memcpy(w->owned, parts, (size_t)n * sizeof *parts);
    w->nowned = n;
    w->rank = rank;
    w->nlive = nlive;
    metrics_set(w->m_owned, n);
    metrics_set(w->m_live, nlive);
    if (changed) {
        log_info("outbox: %d live worker(s), this one (rank %d) owns %d of %d partitions",
                 nlive, rank, n, w->cfg->partitions);
        outbox_lanes_assign(w);
    }
    return changed;
}

static void on_claimed(void *arg, PGresult *res, const char *err)
{
    outbox_worker *w = arg;
    if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
        metrics_inc(w->m_err_pg);
        log_warn("outbox: recording the owned partitions: %s",
                 res ? PQresultErrorMessage(res) : err);
    }
}

static void on_trimmed(void *arg, PGresult *res, const char *err);

static int trim(outbox_worker *w)
{
    char secs[16];
    snprintf(secs, sizeof secs, "%d", w->cfg->outbox_retention_s);
    const char *params[] = {secs, TRIM_BATCH};
    return pgpool_query_sql(w->pg, trim_sql, 2, params, on_trimmed, w);
}

static void on_trimmed(void *arg, PGresult *res, const char *err)
{
    outbox_worker *w = arg;
    if (res && PQresultStatus(res) == PGRES_COMMAND_OK) {
        long n = atol(PQcmdTuples(res));
        metrics_add(w->m_trimmed, (double)n);
        /* A full batch: more may be due. Keep going a while (so retention keeps up with
         * a fast drain), then let the next round continue. */
        if (n >= atol(TRIM_BATCH) && ++w->trim_rounds < TRIM_ROUNDS && !w->stopping &&
            trim(w) == CHORUS_OK)
            return;
    } else {
        metrics_inc(w->m_err_pg);
        log_warn("outbox: retention: %s", res ? PQresultErrorMessage(res) : err);
    }
    hk_done(w);
}

static void on_backlog(void *arg, PGresult *res, const char *err)
{
    outbox_worker *w = arg;
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
        metrics_set(w->m_backlog, atof(PQgetvalue(res, 0, 0)));
        metrics_set(w->m_oldest, atof(PQgetvalue(res, 0, 1)));
    } else {
        metrics_inc(w->m_err_pg);
        log_warn("outbox: backlog: %s", res ? PQresultErrorMessage(res) : err);
    }
    w->trim_rounds = 0;
    if (w->rank == 0 && !w->stopping && trim(w) == CHORUS_OK)
        return; /* one worker trims, so they never contend */
    hk_done(w);
}

static void stats_round(outbox_worker *w)
{
    w->next_stats = ev_now(w->loop) + STATS_PERIOD_S;
    char *parts = owned_literal(w);
    const char *params[] = {parts};
    int rc = pgpool_query_sql(w->pg, backlog_sql, 1, params, on_backlog, w);
    free(parts);
    if (rc != CHORUS_OK)
        hk_done(w);
}

static void on_beat(void *arg, PGresult *res, const char *err)
{
    outbox_worker *w = arg;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        metrics_inc(w->m_err_pg);
        log_warn("outbox: lease renewal failed: %s", res ? PQresultErrorMessage(res) : err);
        if (ev_now(w->loop) > w->lease_until && w->rank >= 0) {
            log_warn("outbox: lease expired: publishing nothing until it is renewed");
            set_owned(w, NULL, 0, -1, 0);
        }
        hk_done(w);
        return;
    }
    int n = PQntuples(res);
    const char *live[MAX_LIVE + 1];
    for (int i = 0; i < n && i < MAX_LIVE; i++)
        live[i] = PQgetvalue(res, i, 0);
    int nlive = (n < MAX_LIVE ? n : MAX_LIVE) + 1;
    live[nlive - 1] = w->node_id;
    /* The lease runs from when the beat was sent: w->lease_until was set then. */
    int *parts = malloc((size_t)w->cfg->partitions * sizeof *parts);
    int np = parts ? outbox_assign(live, nlive, w->node_id, w->cfg->partitions, parts) : 0;
    int rank = 0;
    for (int i = 0; i < nlive - 1; i++)
        rank += strcmp(live[i], w->node_id) < 0;
    bool changed = set_owned(w, parts, np, rank, nlive);
    free(parts);
    if (changed) { /* publish the new set now rather than at the next beat */
        char *lit = owned_literal(w);
        const char *params[] = {w->node_id, lit};
        pgpool_query(w->pg, "outbox_claim", 2, params, on_claimed, w);
        free(lit);
    }
    if (ev_now(w->loop) >= w->next_stats && !w->stopping)
        stats_round(w);
    else
        hk_done(w);
}

static void on_beat_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    outbox_worker *w = t->data;
    if (w->hk_busy || w->stopping)
        return;
    w->hk_busy = true;
    char lease[16];
    snprintf(lease, sizeof lease, "%d", w->cfg->outbox_lease_ms);
    char *parts = owned_literal(w);
    const char *params[] = {w->node_id, lease, parts};
    w->lease_until = ev_now(w->loop) + w->cfg->outbox_lease_ms / 1000.0;
    int rc = pgpool_query(w->pg, "outbox_beat", 3, params, on_beat, w);
    free(parts);
    if (rc != CHORUS_OK)
        hk_done(w);
}

void outbox_lease_start(outbox_worker *w)
{
    double period = w->cfg->outbox_lease_ms / 3000.0;
    w->rank = -1;
    ev_timer_init(&w->beat, on_beat_timer, 0, period);
    w->beat.data = w;
    ev_timer_start(w->loop, &w->beat);
}

void outbox_free_clients(outbox_worker *w)
{
    if (w->pg)
        pgpool_free(w->pg);
    w->pg = NULL;
    if (w->redis)
        rclient_free(w->redis);
    w->redis = NULL;
    outbox_knock_free(w);
}

static void on_left(void *arg, PGresult *res, const char *err)
{
    outbox_worker *w = arg;
    if (!res || PQresultStatus(res) != PGRES_COMMAND_OK)
        log_warn("outbox: could not delete the worker row (its lease will expire): %s",
                 res ? PQresultErrorMessage(res) : err);
    outbox_free_clients(w);
}

void outbox_lease_leave(outbox_worker *w)
{
    if (w->left)
        return;
    w->left = true; /* once: lanes and housekeeping may both report idle */
    ev_timer_stop(w->loop, &w->beat);
    const char *params[] = {w->node_id};
    if (pgpool_query(w->pg, "outbox_leave", 1, params, on_left, w) != CHORUS_OK)
        outbox_free_clients(w);
}
