/* outbox_lane.c - one lane's publishing batches (outbox_internal.h, docs/OUTBOX.md).
 *
 * A batch is one transaction on one connection, in three round trips:
 *   BEGIN; EXECUTE outbox_take: advisory-lock those of the lane's partitions that have
 *                unpublished rows, select the rows FOR UPDATE SKIP LOCKED, oldest first
 *                per partition
 *   XADD every row to its streams, pipelined (all in one loop iteration), a row that
 *                changes memberships preceded by its users' version bump (outbox_memv.c)
 *   XADD to the doorbell one entry naming the streams written (rstream.h), best effort
 *   mark published_at for the rows whose every command succeeded; COMMIT
 * Each ";" pair is one script (pgconn_query_script): on a loaded machine every round
 * trip waits for two wake-ups, and the batch's time is the outbox lag's floor.
 * A batch with any failed command rolls back (rows stay unpublished; the entries that
 * did go out are duplicates the consumers drop by (channel, seq), a bump that did go
 * out costs a cache miss) and the lane backs off.
 * A lane whose last batch found nothing is idle: it runs another batch only when the
 * worker's look (outbox_look_sql) finds rows in one of its partitions (docs/OUTBOX.md
 * "Wake-up").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>

#include "chorus/event.h"
#include "chorus/log.h"
#include "chorus/pgpool.h"
#include "chorus/rclient.h"
#include "chorus/rstream.h"
#include "chorus/status.h"
#include "outbox_internal.h"
#include "outbox_memv.h"
#include "outbox_row.h"

#define POLL_MIN_S 0.001
/* After a batch that took every waiting row while a knock came: let a few more rows
 * gather. Each batch costs three round trips and a probe of every partition of the lane
 * whatever its size, so batching flat out at a moderate rate spends more on the batches
 * than on the rows. */
#define LINGER_S 0.002
#define BACKOFF_MIN_S 0.05
#define BACKOFF_MAX_S 5.0
/* The columns of outbox_take, in order. */
enum { C_ID, C_PART, C_STREAM, C_TYPE, C_WS, C_CH, C_SEQ, C_PAYLOAD, C_USERS, C_CREATED, C_CTID,
       C_MEMBERS };

const char outbox_take_sql[] =
    /* Only partitions with waiting rows are locked: a lock costs more than the index
     * probe that finds a partition empty, and at a low rate most partitions are.
     * MATERIALIZED: each lock is tried exactly once, before any row is read. */
    "WITH waiting AS MATERIALIZED ("
    "  SELECT p FROM unnest($1::int[]) AS p"
    "   WHERE EXISTS (SELECT 1 FROM outbox WHERE published_at IS NULL AND partition_key = p)),"
    " locked AS MATERIALIZED ("
    "  SELECT p FROM waiting WHERE pg_try_advisory_xact_lock(" OUTBOX_LOCK_SPACE ", p))"
    " SELECT o.id, o.partition_key, o.stream, o.event_type, o.workspace_id, o.channel_id,"
    "        o.seq, o.payload::text, o.user_ids::text,"
    "        (extract(epoch FROM o.created_at) * 1000000)::bigint, o.row_ctid,"
    /* The members whose version a channel.deleted bumps (outbox_memv.c: its user_ids
     * are NULL). Only that event runs the lookup, bounded like every target list; the
     * channel_members rows are still there, as deleting a channel only marks it. */
    "        CASE WHEN o.event_type = 'channel.deleted' THEN"
    "          (SELECT array_agg(m.user_id)::text FROM (SELECT user_id FROM channel_members"
    "            WHERE channel_id = o.channel_id LIMIT 10000) m) END"
    "   FROM locked, LATERAL ("
    "     SELECT ctid AS row_ctid, * FROM outbox"
    "      WHERE published_at IS NULL AND partition_key = locked.p"
    "      ORDER BY id LIMIT $2"
    "        FOR UPDATE SKIP LOCKED) o"
    "  LIMIT $2";

/* The look: which partitions have unpublished rows, of any worker's. A loose index scan
 * of the partial index, one descent per partition with rows and one more, so an idle
 * worker pays one descent a poll. One look per worker serves every idle lane and every
 * knock, and only a lane that owns one of the partitions found runs a batch: the other
 * lanes, and the other workers, no longer each open a transaction for a row they do not
 * own. A hint only; the batch decides. Prepared, unlike the mark: it has no parameter,
 * and its plan (the partial index, read in order) is the one made on an empty table as
 * on a grown one; as text, planning the recursion cost more than running it. */
const char outbox_look_sql[] =
    "WITH RECURSIVE p(k) AS ("
    "  (SELECT partition_key FROM outbox WHERE published_at IS NULL"
    "    ORDER BY partition_key LIMIT 1)"
    "  UNION ALL"
    "  SELECT (SELECT partition_key FROM outbox WHERE published_at IS NULL"
    "           AND partition_key > p.k ORDER BY partition_key LIMIT 1)"
    "    FROM p WHERE p.k IS NOT NULL)"
    " SELECT k FROM p WHERE k IS NOT NULL";

/* By ctid: the rows are locked FOR UPDATE by this transaction, so their ctids cannot
 * change before the mark, and a TID scan skips a primary-key probe per row.
 * Sent as text, not prepared: a generic plan made while the table was small is a
 * sequential scan (cheaper than ten TID lookups then), and it stayed one as the table
 * grew, 2 ms a batch over 70,000 rows, until an ANALYZE replanned it; planned with the
 * batch's own ctids it is a TID scan.
 * synchronous_commit off for this transaction only: losing the mark in a crash means
 * publishing the rows again, which at-least-once delivery allows; waiting for the WAL
 * flush on every batch would cap the drain rate at the disk's fsync rate. */
static const char mark_sql[] =
    "WITH c AS (SELECT set_config('synchronous_commit', 'off', true))"
    " UPDATE outbox o SET published_at = clock_timestamp() FROM c"
    "  WHERE o.ctid = ANY('%s'::tid[]); COMMIT";

/* The next wait of a lane that found nothing: 1 ms doubling to outbox_poll_max_ms, or
 * none when a knock came while it looked (the knock's rows may be newer than what it
 * saw). */
static double lane_backoff_idle(outbox_lane *l)
{
    if (l->knocked) {
        l->knocked = false;
        l->delay = 0;
        return 0;
    }
    l->delay = l->delay < POLL_MIN_S ? POLL_MIN_S : l->delay * 2;
    double max = l->w->cfg->outbox_poll_max_ms / 1000.0;
    if (l->delay > max)
        l->delay = max;
    return l->delay;
}

static void lane_schedule(outbox_lane *l, double delay)
{
    ev_timer_stop(l->w->loop, &l->timer);
    if (l->w->stopping || l->nparts == 0)
        return;
    ev_timer_set(&l->timer, delay, 0);
    ev_timer_start(l->w->loop, &l->timer);
}

static double now_wall_us(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec * 1e6 + (double)tv.tv_usec;
}

/* The batch is over (conn given back); what comes next depends on how it went. */
static void lane_finish(outbox_lane *l, double next_delay)
{
    if (l->conn)
        pgpool_release(l->conn); /* rolls back an open transaction */
    l->conn = NULL;
    l->busy = false;
    lane_schedule(l, next_delay);
    if (l->w->stopping)
        outbox_lane_idle(l->w);
}

static void lane_fail(outbox_lane *l, metrics_series *counter, const char *what,
                      const char *err)
{
    metrics_inc(counter);
    l->delay = l->delay < BACKOFF_MIN_S ? BACKOFF_MIN_S : l->delay * 2;
    if (l->delay > BACKOFF_MAX_S)
        l->delay = BACKOFF_MAX_S;
    log_warn("outbox lane %d: %s: %s (retrying in %.2f s)", l->index, what, err ? err : "",
             l->delay);
    lane_finish(l, l->delay);
}

static bool res_ok(PGresult *res)
{
    if (!res)
        return false;
    ExecStatusType st = PQresultStatus(res);
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

static const char *res_err(PGresult *res, const char *err)
{
    return res ? PQresultErrorMessage(res) : err;
}

static void on_commit(void *arg, PGresult *res, const char *err)
{
    outbox_lane *l = arg;
    outbox_worker *w = l->w;
    if (!res_ok(res)) {
        lane_fail(l, w->m_err_pg, "marking rows published", res_err(res, err));
        return;
    }
    double now_us = now_wall_us();
    for (int i = 0; i < l->nsent; i++)
        metrics_observe(w->m_lag, (now_us - (double)l->created_us[i]) / 1e6);
    metrics_add(w->m_events, l->nsent);
    metrics_inc(w->m_batches_published);
    metrics_observe(w->m_batch_rows, l->nsent);
    metrics_observe(w->m_batch_seconds, ev_now(w->loop) - l->started);
    /* A full batch (or one cut short by the XADD bound) means more is waiting. One
     * that took every waiting row is followed by another only if a knock came while it
     * ran: only rows written meanwhile can be there, and the API's knock for them. The
     * lane idles otherwise, and its looks find rows written without a knock. */
    l->delay = 0;
    if (l->nrows >= w->cfg->outbox_batch || l->nsent < l->nrows) {
        lane_finish(l, 0);
        return;
    }
    l->hot = l->knocked;
    l->knocked = false;
    lane_finish(l, l->hot ? LINGER_S : lane_backoff_idle(l));
}

/* Every command of the batch has answered. */
static void lane_sent(outbox_lane *l)
{
    if (l->failed) {
        lane_fail(l, l->w->m_err_redis, "Redis", "a reply was an error or never came");
        return;
    }
    buf sql;
    buf_init(&sql, 0);
    int rc = buf_printf(&sql, mark_sql, l->ids.data);
    if (rc == CHORUS_OK)
        rc = pgconn_query_script(l->conn, NULL, sql.data, on_commit, l);
    buf_free(&sql);
    if (rc != CHORUS_OK)
        lane_fail(l, l->w->m_err_pg, "marking rows published", "not sent");
}

static void on_reply(void *arg, redisReply *reply)
{
    outbox_lane *l = arg;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        if (!l->failed && reply)
            log_warn("outbox lane %d: Redis: %.*s", l->index, (int)reply->len, reply->str);
        l->failed = true;
    }
    if (--l->pending == 0 && !l->sending)
        lane_sent(l);
}

/* One command of the batch; its reply is counted in l->pending. */
static int lane_command(outbox_lane *l, int argc, const char **argv, const size_t *lens)
{
    l->pending++;
    if (rclient_command_argv(l->w->redis, on_reply, l, argc, argv, lens) == CHORUS_OK)
        return CHORUS_OK;
    l->pending--;
    return CHORUS_ERR;
}

static int xadd(outbox_lane *l, int stream_part)
{
    char key[OUTBOX_KEY_MAX];
    outbox_stream_key(stream_part, key);
    const char *argv[] = {"XADD", key, "MAXLEN", "~", l->w->maxlen, "*", "e", l->entry.data};
    size_t lens[] = {4, strlen(key), 6, 1, strlen(l->w->maxlen), 1, 1, l->entry.len};
    return lane_command(l, 8, argv, lens);
}

/* Adds the row's streams to the batch's bell, each once. Stream parts are channel
 * partitions (p) and user partitions (65536 + p). */
static void bell_add(outbox_lane *l, size_t nparts)
{
    int partitions = l->w->cfg->partitions;
    for (size_t k = 0; k < nparts; k++) {
        int part = l->stream_parts[k];
        int slot = part < 65536 ? part : partitions + part % 65536;
        if (slot < 0 || slot >= 2 * partitions || l->bell_gen[slot] == l->gen)
            continue;
        l->bell_gen[slot] = l->gen;
        char key[OUTBOX_KEY_MAX];
        outbox_stream_key(part, key);
        buf_printf(&l->bell, "%s%s", l->bell.len ? " " : "", key);
    }
}

/* The bell goes after the batch's XADDs on the same connection, so a reader it wakes
 * finds the entries. It is not one of the batch's commands: without it readers still
 * get the entries at their next sweep, so its failure is no reason to publish again. */
static void bell_ring(outbox_lane *l)
{
    if (l->bell.len > 0)
        rstream_ring(l->w->redis, l->bell.data, l->bell.len, NULL, NULL);
}

/* The row's bump (if any) first, then its XADDs: Redis runs one connection's commands
 * in order, so whoever reads a membership event from a stream finds the version
 * already bumped. False when a command was refused. */
static bool send_commands(outbox_lane *l, outbox_bump *bump, size_t nparts)
{
    if (bump && lane_command(l, bump->argc, bump->argv, bump->lens) != CHORUS_OK)
        return false;
    for (size_t k = 0; k < nparts; k++)
        if (xadd(l, l->stream_parts[k]) != CHORUS_OK)
            return false;
    return true;
}

/* A row the checks of the outbox table should have made impossible. It is published
 * with the data replaced, so the channel's seq stays gapless on the stream and clients
 * can refetch; a row whose envelope cannot be built at all is marked and skipped. */
static int encode_undeliverable(outbox_lane *l, const outbox_row *row, size_t *nparts)
{
    outbox_row sub = *row;
    sub.payload = "{\"undeliverable\":true}";
    buf_reset(&l->entry);
    char err[160];
    return outbox_row_encode(&sub, l->w->cfg->partitions, &l->entry, l->stream_parts,
                             (size_t)l->w->cfg->partitions * 2 + 1, nparts, err, sizeof err);
}

static void row_from_result(PGresult *res, int i, outbox_row *row)
{
    *row = (outbox_row){PQgetvalue(res, i, C_ID),    PQgetvalue(res, i, C_STREAM),
                        PQgetvalue(res, i, C_TYPE),  PQgetvalue(res, i, C_WS),
                        PQgetvalue(res, i, C_CH),    PQgetvalue(res, i, C_SEQ),
                        PQgetvalue(res, i, C_PAYLOAD), PQgetvalue(res, i, C_USERS),
                        PQgetvalue(res, i, C_CREATED)};
}

/* The row's envelope into l->entry and its streams into l->stream_parts; returns how
 * many streams. */
static size_t encode_row(outbox_lane *l, const outbox_row *row)
{
    outbox_worker *w = l->w;
    buf_reset(&l->entry);
    size_t nparts = 0;
    char err[160];
    size_t max_parts = (size_t)w->cfg->partitions * 2 + 1;
    if (outbox_row_encode(row, w->cfg->partitions, &l->entry, l->stream_parts, max_parts,
                          &nparts, err, sizeof err) != CHORUS_OK) {
        metrics_inc(w->m_err_encode);
        log_error("outbox row %s: %s: publishing it as undeliverable", row->id, err);
        if (encode_undeliverable(l, row, &nparts) != CHORUS_OK)
            nparts = 0;
    }
    return nparts;
}

/* Sends row i; false when the batch must stop before it (command bound or refusal). */
static bool send_row(outbox_lane *l, PGresult *res, int i, int *budget)
{
    /* The ctid goes into the mark's text: Postgres writes one as "(block,item)". */
    const char *ctid = PQgetvalue(res, i, C_CTID);
    if (strspn(ctid, "0123456789(),") != strlen(ctid)) {
        l->failed = true;
        return false;
    }
    outbox_row row;
    row_from_result(res, i, &row);
    size_t nparts = encode_row(l, &row);
    outbox_bump bump;
    int nbump = outbox_bump_build(row.event_type, row.user_ids, PQgetvalue(res, i, C_MEMBERS),
                                  &bump);
    if (nbump < 0) { /* out of memory: no row may go out without its bump */
        l->failed = true;
        return false;
    }
    bool room = (int)nparts + nbump <= *budget || l->nsent == 0;
    bool sent = room && send_commands(l, nbump ? &bump : NULL, nparts);
    if (nbump)
        outbox_bump_free(&bump);
    if (!sent) {
        if (room) /* a refused command; past the bound the rest simply waits, in order */
            l->failed = true;
        return false;
    }
    *budget -= (int)nparts + nbump;
    bell_add(l, nparts);
    metrics_add(l->w->m_entries, (double)nparts);
    l->created_us[l->nsent++] = strtoll(row.created_us, NULL, 10);
    buf_printf(&l->ids, "%s\"%s\"", l->nsent == 1 ? "{" : ",", ctid);
    return true;
}

/* Sends the rows of one partition after the other, each partition oldest first. The
 * statement returns them that way, but nothing in SQL promises it, so the order is
 * made certain here: a sort by (partition, id), parsed once per row. */
typedef struct row_key {
    long long part, id;
    int row;
} row_key;

static int cmp_row(const void *a, const void *b)
{
    const row_key *x = a, *y = b;
    if (x->part != y->part)
        return x->part < y->part ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static void lane_send(outbox_lane *l, PGresult *res)
{
    int n = PQntuples(res);
    row_key *order = malloc((size_t)(n ? n : 1) * sizeof *order);
    if (!order) {
        lane_fail(l, l->w->m_err_encode, "send", "out of memory");
        return;
    }
    for (int i = 0; i < n; i++)
        order[i] = (row_key){atoll(PQgetvalue(res, i, C_PART)), atoll(PQgetvalue(res, i, C_ID)),
                             i};
    qsort(order, (size_t)n, sizeof *order, cmp_row);
    l->nrows = n;
    l->nsent = 0;
    l->pending = 0;
    l->failed = false;
    l->sending = true;
    buf_reset(&l->ids);
    buf_reset(&l->bell);
    l->gen++;
    int budget = l->w->max_commands;
    for (int i = 0; i < n && send_row(l, res, order[i].row, &budget); i++)
        ;
    free(order);
    bell_ring(l);
    l->sending = false;
    if (l->nsent == 0)
        buf_puts(&l->ids, "{");
    buf_puts(&l->ids, "}");
    if (l->pending == 0)
        lane_sent(l);
}

static void on_rows(void *arg, PGresult *res, const char *err)
{
    outbox_lane *l = arg;
    if (!res_ok(res)) {
        lane_fail(l, l->w->m_err_pg, "selecting rows", res_err(res, err));
        return;
    }
    if (PQntuples(res) == 0) { /* nothing: end the transaction, poll less often */
        metrics_inc(l->w->m_batches_empty);
        l->hot = false;
        lane_finish(l, lane_backoff_idle(l)); /* the release rolls back */
        return;
    }
    l->hot = true;
    lane_send(l, res);
}

/* The partitions go in as an array literal, starting at a rotating offset: when a
 * batch cannot take every waiting row, the partitions near the front of the list would
 * otherwise always be served first. */
static void on_conn(void *arg, pgconn *conn, const char *err)
{
    outbox_lane *l = arg;
    l->conn = conn;
    if (!conn) {
        lane_fail(l, l->w->m_err_pg, "connection", err);
        return;
    }
    l->started = ev_now(l->w->loop);
    buf sql;
    buf_init(&sql, 0);
    int rc = buf_puts(&sql, "BEGIN; EXECUTE outbox_take('{");
    unsigned start = l->rotate++;
    for (int i = 0; i < l->nparts && rc == CHORUS_OK; i++)
        rc = buf_printf(&sql, "%s%d", i ? "," : "",
                        l->parts[(start + (unsigned)i) % (unsigned)l->nparts]);
    if (rc == CHORUS_OK)
        rc = buf_printf(&sql, "}', %d)", l->w->cfg->outbox_batch);
    if (rc == CHORUS_OK)
        rc = pgconn_query_script(conn, "outbox_take", sql.data, on_rows, l);
    buf_free(&sql);
    if (rc != CHORUS_OK)
        lane_fail(l, l->w->m_err_pg, "selecting rows", "not sent");
}

static void lane_start_batch(outbox_lane *l)
{
    l->busy = true;
    l->knocked = false;
    if (pgpool_acquire(l->w->pg, on_conn, l) != CHORUS_OK) {
        l->busy = false;
        lane_fail(l, l->w->m_err_pg, "connection", "pool queue full");
    }
}

static void look(outbox_worker *w, bool knocked);

/* A waiting lane's answer: a batch when its partitions have rows, else its idle wait, or
 * the next look when a knock came after this one was sent. */
static void lane_looked(outbox_lane *l, bool found, bool again)
{
    if (l->w->stopping || found || !again) {
        l->waiting = false;
        l->busy = false;
    }
    if (l->w->stopping)
        return;
    if (found)
        lane_start_batch(l);
    else if (!again)
        lane_schedule(l, lane_backoff_idle(l));
}

/* Whether the look's rows name a partition of the lane. */
static bool look_found(const outbox_worker *w, PGresult *res, int lane)
{
    for (int r = 0; r < PQntuples(res); r++) {
        int part = atoi(PQgetvalue(res, r, 0));
        if (part >= 0 && part < w->cfg->partitions && w->part_lane[part] == lane)
            return true;
    }
    return false;
}

/* The look failed or was not sent: its waiting lanes back off as after a failed batch. */
static void look_failed(outbox_worker *w, const char *err)
{
    for (int i = 0; i < w->nlanes; i++) {
        outbox_lane *l = &w->lanes[i];
        if (l->waiting) {
            l->waiting = false;
            l->busy = false;
            lane_fail(l, w->m_err_pg, "looking", err);
        }
    }
}

static void on_look(void *arg, PGresult *res, const char *err)
{
    outbox_worker *w = arg;
    w->looking = false;
    bool again = w->look_again;
    w->look_again = false;
    bool waiting = false;
    if (!res_ok(res))
        look_failed(w, res_err(res, err));
    for (int i = 0; i < w->nlanes && res_ok(res); i++) {
        outbox_lane *l = &w->lanes[i];
        bool found = look_found(w, res, i);
        if (l->waiting) {
            lane_looked(l, found, again);
            waiting = waiting || l->waiting;
        } else if (!l->busy && !l->hot && ev_is_active(&l->timer)) {
            lane_schedule(l, found ? 0 : l->delay); /* this look was its poll */
        }
    }
    if (waiting)
        look(w, false);
    if (w->stopping)
        outbox_lane_idle(w);
}

/* Sends the look for the waiting lanes. With one under way the lanes wait for its
 * answer, and a knock asks for one more after it: its rows may be newer than that
 * look's snapshot. */
static void look(outbox_worker *w, bool knocked)
{
    if (w->looking) {
        w->look_again = w->look_again || knocked;
        return;
    }
    metrics_inc(w->m_looks);
    if (pgpool_query(w->pg, "outbox_look", 0, NULL, on_look, w) == CHORUS_OK)
        w->looking = true;
    else
        look_failed(w, "pool queue full");
}

/* An idle lane joins the next look. */
static void lane_wait_look(outbox_lane *l)
{
    ev_timer_stop(l->w->loop, &l->timer);
    l->busy = true;
    l->waiting = true;
    l->knocked = false;
}

static void on_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    outbox_lane *l = t->data;
    if (l->busy || l->w->stopping || l->nparts == 0)
        return;
    if (!rclient_connected(l->w->redis)) { /* nothing could be published: wait */
        l->delay = l->delay < BACKOFF_MIN_S ? BACKOFF_MIN_S : l->delay;
        lane_schedule(l, l->delay);
        return;
    }
    if (l->hot) {
        lane_start_batch(l);
        return;
    }
    lane_wait_look(l);
    look(l->w, false);
}

int outbox_lanes_init(outbox_worker *w)
{
    w->lanes = calloc((size_t)w->nlanes, sizeof *w->lanes);
    w->part_lane = malloc((size_t)w->cfg->partitions * sizeof *w->part_lane);
    if (!w->lanes || !w->part_lane)
        return CHORUS_ERR;
    for (int p = 0; p < w->cfg->partitions; p++)
        w->part_lane[p] = -1;
    for (int i = 0; i < w->nlanes; i++) {
        outbox_lane *l = &w->lanes[i];
        l->w = w;
        l->index = i;
        l->parts = calloc((size_t)w->cfg->partitions, sizeof *l->parts);
        l->created_us = calloc((size_t)w->cfg->outbox_batch, sizeof *l->created_us);
        l->stream_parts = calloc((size_t)w->cfg->partitions * 2 + 1, sizeof *l->stream_parts);
        l->bell_gen = calloc((size_t)w->cfg->partitions * 2, sizeof *l->bell_gen);
        if (!l->parts || !l->created_us || !l->stream_parts || !l->bell_gen)
            return CHORUS_ERR;
        buf_init(&l->ids, 0);
        buf_init(&l->bell, 0);
        buf_init(&l->entry, 0);
        ev_timer_init(&l->timer, on_timer, 0, 0);
        l->timer.data = l;
    }
    return CHORUS_OK;
}

void outbox_lanes_free(outbox_worker *w)
{
    for (int i = 0; w->lanes && i < w->nlanes; i++) {
        outbox_lane *l = &w->lanes[i];
        if (w->loop)
            ev_timer_stop(w->loop, &l->timer);
        free(l->parts);
        free(l->created_us);
        free(l->stream_parts);
        free(l->bell_gen);
        buf_free(&l->ids);
        buf_free(&l->bell);
        buf_free(&l->entry);
    }
    free(w->lanes);
    w->lanes = NULL;
    free(w->part_lane);
    w->part_lane = NULL;
}

void outbox_lanes_assign(outbox_worker *w)
{
    for (int i = 0; i < w->nlanes; i++)
        w->lanes[i].nparts = 0;
    for (int p = 0; p < w->cfg->partitions; p++)
        w->part_lane[p] = -1;
    for (int j = 0; j < w->nowned; j++) {
        outbox_lane *l = &w->lanes[j % w->nlanes];
        l->parts[l->nparts++] = w->owned[j];
        w->part_lane[w->owned[j]] = l->index;
    }
    for (int i = 0; i < w->nlanes; i++) {
        outbox_lane *l = &w->lanes[i];
        if (l->nparts == 0)
            ev_timer_stop(w->loop, &l->timer);
        else if (!l->busy && !ev_is_active(&l->timer))
            lane_schedule(l, 0);
    }
}

void outbox_lanes_knock(outbox_worker *w)
{
    bool waiting = false;
    for (int i = 0; i < w->nlanes && !w->stopping; i++) {
        outbox_lane *l = &w->lanes[i];
        if (l->nparts == 0 || (l->hot && !l->busy)) /* its next batch is due in LINGER_S */
            continue;
        if (l->waiting) {
            waiting = true;
        } else if (l->busy) {
            l->knocked = true;
        } else {
            l->delay = 0;
            lane_wait_look(l);
            waiting = true;
        }
    }
    if (waiting)
        look(w, true);
}

bool outbox_lanes_quiet(outbox_worker *w)
{
    bool quiet = true;
    for (int i = 0; i < w->nlanes; i++) {
        ev_timer_stop(w->loop, &w->lanes[i].timer);
        quiet = quiet && !w->lanes[i].busy;
    }
    return quiet;
}
