/* wss_resume.c - missed events: {"op":"resume","positions":{"<ch>":<seq>,...}} (API.md),
 * and the catch-up of a channel the session joins while connected.
 *
 * A channel is answered from the node's recent-event buffer when the buffer reaches back
 * to the position (wss_fanout_resume); the others from the outbox, which keeps every
 * published channel event for outbox_retention_s (docs/OUTBOX.md): one query for all of
 * them, shared with the other resumes of the loop iteration (below), at most
 * WSS_RESUME_MAX events per channel, in seq order. A channel further
 * behind than that, or whose missed events retention has already deleted, gets an
 * error frame "resume_too_far" and the client pages its history over REST. A client
 * resume ends with {"t":"resumed"}.
 *
 * While the query runs the session holds its live events; afterwards it sends those
 * still new to it, so the client sees each seq once, in order. The query starts only
 * once the node's reader has a position on every partition subscribed so far
 * (wss_fanout_barrier): whatever the query cannot see yet, the stream brings later.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chorus/buf.h"
#include "chorus/event.h"
#include "chorus/log.h"
#include "chorus/pgpool.h"
#include "chorus/status.h"
#include "wss_internal.h"

#define WSS_RESUME_MAX 1000
#define WSS_RESUME_CHANNELS 1000

/* Resumes go out together (wss_batch.h): one query over the distinct (channel,
 * position) pairs of the resumes of a loop iteration, at most INFLIGHT_MAX out at once,
 * batches of up to BATCH_PAIRS pairs and at most WAITING_MAX of them in line (past that
 * a batch fails: 1013 for its sessions). One query per resume made the newest node of
 * the noisy 100k load runs, which the reconnects of the whole fleet land on, queue
 * thousands of them behind its six pool connections until they timed out (10,045 in one
 * run, each then a reconnect and a resume again); the sessions of one channel that a
 * node sheds or loses mostly resume from the same seq. */
#define BATCH_PAIRS 1024
#define INFLIGHT_MAX 2
#define WAITING_MAX 64

enum { C_K, C_SEQ, C_TYPE, C_WS, C_PAYLOAD, C_AT, C_LAST };

const char wss_resume_sql[] =
    "SELECT p.k, o.seq, o.event_type, o.workspace_id, o.payload::text,"
    "       (extract(epoch FROM o.created_at) * 1000000)::bigint,"
    "       (SELECT last_seq FROM channels WHERE id = p.ch)"
    "  FROM unnest($1::bigint[], $2::bigint[]) WITH ORDINALITY AS p(ch, after, k)"
    "  LEFT JOIN LATERAL (SELECT * FROM outbox"
    "                      WHERE stream = 'ch' AND channel_id = p.ch AND seq > p.after"
    "                      ORDER BY seq LIMIT $3) o ON true"
    " ORDER BY p.k, o.seq";

typedef struct resumed {
    int64_t ch, after, max_sent, last_seq;
    int rows;
    int k;                /* its pair in the batch's query (0-based) */
    bool gap;
} resumed;

typedef struct resume_req {
    wss_session *s;
    bool client;          /* the client's op (ends with "resumed"), not a catch-up */
    resumed *chans;
    int n;
} resume_req;

/* One role per process runs a node, so the series is the module's own. */
static metrics_series *m_queries;

static void req_free(resume_req *r)
{
    if (r)
        free(r->chans);
    free(r);
}

static void too_far(wss_session *s, int64_t ch, int64_t seq)
{
    metrics_inc(s->node->m_resume_far);
    wss_session_send_json(s, json_pack("{s:s,s:s,s:I,s:I,s:s}", "t", "error", "code",
                                       "resume_too_far", "ch", (json_int_t)ch, "seq",
                                       (json_int_t)seq, "message",
                                       "page the channel's history over REST from seq"));
}

/* One outbox row as the client frame of the session's protocol. */
static void send_row(wss_session *s, PGresult *res, int i, int64_t ch)
{
    chorus_event ev = {.channel_id = ch};
    snprintf(ev.type, sizeof ev.type, "%s", PQgetvalue(res, i, C_TYPE));
    ev.seq = atoll(PQgetvalue(res, i, C_SEQ));
    ev.workspace_id = atoll(PQgetvalue(res, i, C_WS));
    ev.created_at_us = atoll(PQgetvalue(res, i, C_AT));
    ev.data = json_loads(PQgetvalue(res, i, C_PAYLOAD), 0, NULL);
    json_t *j = event_to_frame_json(&ev);
    wss_frame *f = j ? wss_frame_encode(j, wss_session_is_msgpack(s)) : NULL;
    json_decref(j);
    wss_session_send_seq(s, ch, ev.seq, f);
    wss_frame_unref(f);
    event_clear(&ev);
}

static void report(wss_session *s, resume_req *r)
{
    for (int i = 0; i < r->n; i++) {
        resumed *c = &r->chans[i];
        if (c->gap || (c->rows == WSS_RESUME_MAX && c->last_seq > c->max_sent))
            too_far(s, c->ch, c->max_sent);
    }
}

/* The rows of each of r's channels: rows first[k] .. first[k + 1] - 1 of its pair k. */
static void read_rows(resume_req *r, PGresult *res, const int *first)
{
    for (int j = 0; j < r->n; j++) {
        resumed *c = &r->chans[j];
        for (int i = first[c->k]; i < first[c->k + 1]; i++) {
            c->last_seq = atoll(PQgetvalue(res, i, C_LAST));
            if (PQgetisnull(res, i, C_SEQ))
                continue; /* nothing missed */
            int64_t seq = atoll(PQgetvalue(res, i, C_SEQ));
            if (c->rows == 0 && seq != c->after + 1)
                c->gap = true; /* retention took the first missed ones */
            if (c->gap)
                continue;
            send_row(r->s, res, i, c->ch);
            c->max_sent = seq;
            c->rows++;
        }
    }
}

static void run_catchups(wss_session *s);

/* The missed events could not be read (Postgres busy past the pool's wait, or down).
 * Letting the held live events go now would hand the client seqs past a gap it cannot
 * see: in the 100k load test a node whose Postgres queue timed out 1,749 resumes sent
 * an error frame and went on, and 5,052 events were lost to the clients. So the
 * session ends with 1013 (try again later): the client reconnects, maybe elsewhere, and
 * resumes from the same positions. */
static void fail(wss_session *s)
{
    metrics_inc(s->node->m_resume_failed);
    s->ncatchup = 0;
    wss_session_close(s, WSS_CLOSE_TRY_AGAIN, "resume failed: reconnect and resume");
    wss_session_resume_done(s);
}

/* The query of r answered (or failed): the next catch-ups, or the end of the hold. */
static void finish(wss_session *s, resume_req *r, bool ok)
{
    if (!ok) {
        fail(s);
        return;
    }
    report(s, r);
    if (r->client)
        wss_session_send_json(s, json_pack("{s:s}", "t", "resumed"));
    if (s->ncatchup)
        run_catchups(s);
    else
        wss_session_resume_done(s);
}

/* ---- the batches ------------------------------------------------------------------- */

static bool send_batch(void *ctx, wss_batch *b);
static void fail_batch(void *ctx, wss_batch *b, const char *why);

int wss_resume_init(wss_node *node)
{
    m_queries = metrics_counter("chorus_wss_resume_queries_total",
                                "resume and catch-up queries (each answers a batch)");
    wss_batcher_opts o = {.max_weight = BATCH_PAIRS, .inflight_max = INFLIGHT_MAX,
                          .waiting_max = WAITING_MAX, .send = send_batch, .fail = fail_batch,
                          .ctx = node, .overflow_why = "too many resumes waiting"};
    node->resumes = wss_batcher_new(app_loop(node->app), &o);
    if (!node->resumes)
        return CHORUS_ERR;
    return pgpool_prepare(node->pg, "wss_resume", wss_resume_sql);
}

/* Where pair k's rows start: rows come ordered by pair, at least one each (the outer
 * join), so the last row's pair is the number of pairs. first[npairs] = rows. */
static int *pair_starts(PGresult *res)
{
    int rows = PQntuples(res), i = 0;
    int npairs = rows ? atoi(PQgetvalue(res, rows - 1, C_K)) : 0;
    int *first = calloc((size_t)npairs + 1, sizeof *first);
    for (int k = 0; first && k < npairs; k++) {
        first[k] = i;
        while (i < rows && atoi(PQgetvalue(res, i, C_K)) == k + 1)
            i++;
    }
    if (first)
        first[npairs] = i;
    return first;
}

/* Every resume of b answered from first's rows of res (first NULL: failed, why). */
static void answer_batch(wss_batch *b, PGresult *res, const int *first, const char *why)
{
    if (!first)
        log_warn("wss: a resume query for %d channel positions failed: %s", b->weight, why);
    for (int i = 0; i < b->n; i++) {
        resume_req *r = b->items[i];
        wss_session *s = r->s;
        if (wss_session_reply_came(s)) {
            if (first)
                read_rows(r, res, first);
            finish(s, r, first != NULL);
        }
        req_free(r);
    }
}

static void fail_batch(void *ctx, wss_batch *b, const char *why)
{
    (void)ctx;
    answer_batch(b, NULL, NULL, why);
}

static void on_rows(void *arg, PGresult *res, const char *err)
{
    wss_batch *b = arg;
    bool ok = res && PQresultStatus(res) == PGRES_TUPLES_OK;
    int *first = ok ? pair_starts(res) : NULL;
    /* why, for when first is NULL */
    answer_batch(b, res, first, ok ? "out of memory" : err ? err : PQresultErrorMessage(res));
    free(first);
    wss_batcher_done(b);
}

/* The batch's distinct pairs as two array literals; each channel's k is set. */
static int pairs_text(wss_batch *b, buf *chs, buf *afters)
{
    int64_t *pc = malloc((size_t)b->weight * 2 * sizeof *pc);
    if (!pc)
        return CHORUS_ERR;
    int n = 0;
    for (int i = 0; i < b->n; i++) {
        resume_req *r = b->items[i];
        for (int j = 0; j < r->n; j++) {
            resumed *c = &r->chans[j];
            int k = 0;
            while (k < n && (pc[2 * k] != c->ch || pc[2 * k + 1] != c->after))
                k++;
            if (k == n) {
                pc[2 * n] = c->ch;
                pc[2 * n + 1] = c->after;
                n++;
            }
            c->k = k;
        }
    }
    int rc = buf_puts(chs, "{") | buf_puts(afters, "{");
    for (int k = 0; k < n; k++) {
        rc |= buf_printf(chs, "%s%lld", k ? "," : "", (long long)pc[2 * k]);
        rc |= buf_printf(afters, "%s%lld", k ? "," : "", (long long)pc[2 * k + 1]);
    }
    rc |= buf_puts(chs, "}") | buf_puts(afters, "}");
    free(pc);
    return rc == CHORUS_OK ? CHORUS_OK : CHORUS_ERR;
}

static bool send_batch(void *ctx, wss_batch *b)
{
    wss_node *node = ctx;
    buf chs, afters;
    buf_init(&chs, 0);
    buf_init(&afters, 0);
    char limit[16];
    snprintf(limit, sizeof limit, "%d", WSS_RESUME_MAX);
    int rc = pairs_text(b, &chs, &afters);
    const char *params[] = {chs.data, afters.data, limit};
    if (rc == CHORUS_OK)
        rc = pgpool_query(node->pg, "wss_resume", 3, params, on_rows, b);
    buf_free(&chs);
    buf_free(&afters);
    if (rc != CHORUS_OK) {
        fail_batch(NULL, b, "the resume query was refused (pool busy or stopping)");
        return false;
    }
    metrics_inc(m_queries);
    return true;
}

void wss_resume_stop(wss_node *node)
{
    wss_batcher_stop(node->resumes, "the node is stopping");
}

void wss_resume_free(wss_node *node)
{
    wss_batcher_free(node->resumes, "the node is stopping");
    node->resumes = NULL;
}

/* r waits for its batch's query; the session counts the reply due first, since a batch
 * that overflows the line is answered (failed) at once. */
static void query(wss_session *s, resume_req *r)
{
    s->pending++;
    if (!s->node->resumes || !wss_batcher_add(s->node->resumes, r, r->n)) {
        s->pending--;
        finish(s, r, false);
        req_free(r);
    }
}

static void on_positioned(void *arg, bool ok)
{
    (void)ok; /* without Redis the outbox still answers; the stream catches up later */
    resume_req *r = arg;
    if (wss_session_reply_came(r->s))
        query(r->s, r);
    else
        req_free(r);
}

/* Answers what the buffer can, then reads the rest from Postgres (r is taken). The
 * session has every seq up to each position: none of them is sent again. The stream of
 * this node may not have brought them yet (the client had them from another node, or
 * from REST), and it would deliver them live after the resume. */
static void start(wss_session *s, resume_req *r)
{
    wss_fanout *fo = s->node->fanout;
    int left = 0;
    for (int i = 0; i < r->n; i++) {
        resumed c = r->chans[i];
        if (fo)
            wss_fanout_set_seen(fo, c.ch, s, c.after);
        if (fo && wss_fanout_resume(fo, c.ch, c.after, s))
            metrics_inc(s->node->m_resume_buffer);
        else
            r->chans[left++] = c;
    }
    metrics_add(s->node->m_resume_pg, left);
    r->n = left;
    s->resuming = true;
    if (left == 0) {
        finish(s, r, true);
        req_free(r);
    } else if (wss_fanout_barrier(s->node->fanout, on_positioned, r) == CHORUS_OK) {
        s->pending++;
    } else {
        query(s, r);
    }
}

static void run_catchups(wss_session *s)
{
    resume_req *r = calloc(1, sizeof *r);
    if (r)
        r->chans = calloc((size_t)s->ncatchup, sizeof *r->chans);
    for (int i = 0; r && r->chans && i < s->ncatchup; i++) {
        wss_change c = s->catchup[i];
        /* from what the session has now: a resume that ran meanwhile may have sent more */
        int64_t seen = s->node->fanout ? wss_fanout_seen(s->node->fanout, c.ch, s) : 0;
        int64_t after = seen > c.seq ? seen : c.seq;
        if (wss_session_has(s, c.ch)) /* not left again meanwhile */
            r->chans[r->n++] = (resumed){.ch = c.ch, .after = after, .max_sent = after};
    }
    s->ncatchup = 0;
    if (r)
        r->s = s;
    if (!r || !r->chans) {
        req_free(r);
        wss_session_close(s, 1011, "out of memory");
        wss_session_resume_done(s);
        return;
    }
    start(s, r);
}

void wss_resume_catchup(wss_session *s, int64_t ch, int64_t after)
{
    if (!wss_change_push(s, &s->catchup, &s->ncatchup, (wss_change){0, ch, after}))
        return;
    if (!s->resuming)
        run_catchups(s); /* else they run when the resume under way ends */
}

/* The positions of the op, each a channel of the session; NULL (and an error frame
 * sent) when the op is malformed. */
static const char *parse(wss_session *s, json_t *op, resume_req *r)
{
    json_t *pos = json_object_get(op, "positions");
    size_t n = json_is_object(pos) ? json_object_size(pos) : 0;
    if (!json_is_object(pos))
        return "positions must be an object";
    if (n == 0)
        return "positions is empty";
    if (n > WSS_RESUME_CHANNELS)
        return "too many channels";
    r->chans = calloc(n, sizeof *r->chans);
    if (!r->chans)
        return "out of memory";
    const char *key;
    json_t *v;
    json_object_foreach(pos, key, v) {
        char *end;
        long long ch = strtoll(key, &end, 10);
        if (*end || ch <= 0 || !json_is_integer(v) || json_integer_value(v) < 0)
            return "positions maps channel ids to seqs (integers >= 0)";
        if (!wss_session_has(s, ch))
            return "a channel of positions is not one of the session's channels";
        r->chans[r->n++] = (resumed){.ch = ch, .after = json_integer_value(v),
                                     .max_sent = json_integer_value(v)};
    }
    return NULL;
}

void wss_resume(wss_session *s, json_t *op)
{
    if (!s->loaded && !s->resume_later) {
        /* the channel list is still being read: the resume runs right after it */
        s->resume_later = json_incref(op);
        return;
    }
    if (s->resuming || !s->loaded) {
        wss_session_send_error(s, "busy", "a resume is under way: retry after \"resumed\"");
        return;
    }
    resume_req *r = calloc(1, sizeof *r);
    const char *why = r ? parse(s, op, r) : "out of memory";
    if (why) {
        wss_session_send_error(s, "bad_resume", why);
        req_free(r);
        if (s->awaiting)
            wss_session_end_await(s);
        return;
    }
    r->s = s;
    r->client = true;
    s->awaiting = false; /* the hold goes on while resuming */
    start(s, r);
}
