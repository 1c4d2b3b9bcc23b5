/* pgpool.c - the Postgres pool: options, statements, the wait queue, leases, metrics
 * and shutdown. One connection's life is in pgpool_conn.c.
 *
 * Policies written down here:
 * - Waiting. A request that finds no idle connection waits in a FIFO queue of at most
 *   queue_max entries, and for at most connect_timeout_ms (HikariCP's connectionTimeout:
 *   one number bounds both a connect attempt and how long a caller waits for a
 *   connection). Past it the callback gets res NULL and err "timeout" when some
 *   connection is up (the pool is saturated) or "unavailable" when none is (the server
 *   is down), counted as kind="timeout". So nothing waits for ever on a dead server.
 * - Reconnecting. Backoff with decorrelated jitter between backoff_min_ms and
 *   backoff_max_ms (see schedule_backoff in pgpool_conn.c), reset by a good connect.
 * - Deferral. A callback never runs inside the call that scheduled it: query sends
 *   happen synchronously (sending calls no callback), while grants of acquired
 *   connections and failures found outside the loop are handed to the "kick" timer
 *   (a zero-delay ev_timer), which runs them from the loop.
 * - One result per request: the first error, else the last result. Only a script
 *   (pgconn_query_script, the simple query protocol) may hold several statements;
 *   PQsendQueryParams refuses them.
 * - Shutdown (pgpool_free). From outside the pool's callbacks it fails the waiting
 *   requests at once (like redisAsyncFree), closes idle and leased-idle connections and
 *   frees the pool as soon as no statement is in flight; inside a callback the same
 *   happens from the loop. Leases still held become inert: pgconn_query returns
 *   CHORUS_ERR and pgpool_release only frees the handle. If the loop is not run again
 *   while statements are in flight, the pool cannot finish (as with hiredis).
 * - Metrics series are labelled by pool name; two live pools should not share a name.
 * - libpq resolves host names with a blocking getaddrinfo inside PQconnectStart/Poll:
 *   give the pool an IP address (hostaddr=, or an IP in the URI) to keep the loop free.
 * - Leased connections track which statements they prepared; a caller must not run
 *   DEALLOCATE or DISCARD ALL on them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chorus/log.h"
#include "chorus/metrics.h"
#include "chorus/pgpool.h"
#include "chorus/status.h"
#include "pgpool_internal.h"

#define PGPOOL_MAX_SIZE 1000
#define PGPOOL_ERR_CLOSING "pool closing"

/* ---- small helpers --------------------------------------------------------------- */

double pgp_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double pgp_random(pgpool *p)
{
    /* xorshift64*: jitter only needs to differ between slots and processes. */
    uint64_t x = p->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    p->rng = x;
    return (double)((x * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

void pgp_count(metrics_series *s)
{
    if (s)
        metrics_inc(s);
}

void pgp_observe(metrics_series *s, double v)
{
    if (s)
        metrics_observe(s, v < 0 ? 0 : v);
}

static void gauge_set(metrics_series *s, double v)
{
    if (s)
        metrics_set(s, v);
}

void pgp_kick(pgpool *p)
{
    if (!ev_is_active(&p->kick)) {
        ev_timer_set(&p->kick, 0., 0.);
        ev_timer_start(p->loop, &p->kick);
    }
}

void pgp_gauges(pgpool *p)
{
    int idle = 0, busy = 0, connecting = 0;
    for (int i = 0; i < p->size; i++) {
        const pgslot *s = &p->slots[i];
        if (s->state == SLOT_CONNECTING || s->state == SLOT_SETUP)
            connecting++;
        else if (pgslot_is_idle(s))
            idle++;
        else if (s->state == SLOT_READY)
            busy++;
    }
    gauge_set(p->m_idle, idle);
    gauge_set(p->m_busy, busy);
    gauge_set(p->m_connecting, connecting);
    gauge_set(p->m_queue, p->nqueued);
}

static metrics_series *series(metrics_family *f, const char *v1, const char *v2)
{
    if (!f)
        return NULL;
    return v2 ? metrics_with2(f, v1, v2) : metrics_with1(f, v1);
}

/* Families are registered by name: a second pool (or a second pgpool_new after
 * metrics_reset) gets the existing family back, so each is registered once. */
static void metrics_setup(pgpool *p)
{
    metrics_family *conns =
        metrics_family_new(METRICS_GAUGE, "chorus_pg_pool_connections",
                           "Postgres pool connections by state", "pool,state", NULL, 0);
    metrics_family *size = metrics_family_new(
        METRICS_GAUGE, "chorus_pg_pool_size", "Postgres pool configured size", "pool", NULL, 0);
    metrics_family *queue =
        metrics_family_new(METRICS_GAUGE, "chorus_pg_pool_queue_length",
                           "Requests waiting for a Postgres connection", "pool", NULL, 0);
    metrics_family *wait = metrics_family_new(
        METRICS_HISTOGRAM, "chorus_pg_pool_wait_seconds",
        "Time from a request to getting a Postgres connection", "pool", NULL, 0);
    metrics_family *query =
        metrics_family_new(METRICS_HISTOGRAM, "chorus_pg_query_seconds",
                           "Postgres statement duration", "pool", NULL, 0);
    metrics_family *errs =
        metrics_family_new(METRICS_COUNTER, "chorus_pg_errors_total",
                           "Postgres pool errors by kind", "pool,kind", NULL, 0);
    p->m_idle = series(conns, p->name, "idle");
    p->m_busy = series(conns, p->name, "busy");
    p->m_connecting = series(conns, p->name, "connecting");
    p->m_size = series(size, p->name, NULL);
    p->m_queue = series(queue, p->name, NULL);
    p->m_wait = series(wait, p->name, NULL);
    p->m_query = series(query, p->name, NULL);
    p->m_err_connect = series(errs, p->name, "connect");
    p->m_err_query = series(errs, p->name, "query");
    p->m_err_timeout = series(errs, p->name, "timeout");
    p->m_err_queue_full = series(errs, p->name, "queue_full");
    /* Make every error series visible at 0 from the start. */
    if (p->m_err_connect)
        metrics_add(p->m_err_connect, 0);
    if (p->m_err_query)
        metrics_add(p->m_err_query, 0);
    if (p->m_err_timeout)
        metrics_add(p->m_err_timeout, 0);
    if (p->m_err_queue_full)
        metrics_add(p->m_err_queue_full, 0);
}

/* ---- requests and the queue ------------------------------------------------------ */

static pgreq *req_new(pgpool *p, pgreq_kind kind, int stmt, const char *sql, int nparams,
                      const char *const *params)
{
    size_t len = sizeof(pgreq) + (size_t)nparams * sizeof(char *);
    for (int i = 0; i < nparams; i++)
        if (params[i])
            len += strlen(params[i]) + 1;
    if (sql)
        len += strlen(sql) + 1;
    pgreq *r = calloc(1, len);
    if (!r)
        return NULL;
    const char **pv = (const char **)(void *)(r + 1);
    char *q = (char *)(pv + nparams);
    for (int i = 0; i < nparams; i++) {
        if (!params[i]) {
            pv[i] = NULL;
            continue;
        }
        size_t n = strlen(params[i]) + 1;
        memcpy(q, params[i], n);
        pv[i] = q;
        q += n;
    }
    if (sql) {
        memcpy(q, sql, strlen(sql) + 1);
        r->sql = q;
    }
    r->kind = kind;
    r->stmt = stmt;
    r->nparams = nparams;
    r->params = nparams ? pv : NULL;
    r->deadline = ev_now(p->loop) + p->connect_timeout;
    r->t_start = pgp_mono();
    return r;
}

static void req_free(pgreq *r)
{
    free(r->err);
    free(r);
}

static void arm_qtimer(pgpool *p)
{
    if (!p->qhead || ev_is_active(&p->qtimer))
        return;
    double d = p->qhead->deadline - ev_now(p->loop);
    ev_timer_set(&p->qtimer, d > 0 ? d : 0., 0.);
    ev_timer_start(p->loop, &p->qtimer);
}

static void queue_push(pgpool *p, pgreq *r)
{
    r->next = NULL;
    if (p->qtail)
        p->qtail->next = r;
    else
        p->qhead = r;
    p->qtail = r;
    p->nqueued++;
    arm_qtimer(p);
}

void pgp_requeue_front(pgpool *p, pgreq *r)
{
    r->next = p->qhead;
    p->qhead = r;
    if (!p->qtail)
        p->qtail = r;
    p->nqueued++;
    arm_qtimer(p);
}

static pgreq *queue_pop(pgpool *p)
{
    pgreq *r = p->qhead;
    if (!r)
        return NULL;
    p->qhead = r->next;
    if (!p->qhead)
        p->qtail = NULL;
    p->nqueued--;
    r->next = NULL;
    return r;
}

void pgp_fail_later(pgpool *p, pgreq *r, const char *err)
{
    r->err = strdup(err ? err : "failed");
    r->next = NULL;
    if (p->ftail)
        p->ftail->next = r;
    else
        p->fhead = r;
    p->ftail = r;
    pgp_kick(p);
}

static pgreq *fail_pop(pgpool *p)
{
    pgreq *r = p->fhead;
    if (r) {
        p->fhead = r->next;
        if (!p->fhead)
            p->ftail = NULL;
    }
    return r;
}

/* Runs r's callback and frees r. depth tells pgpool_free that it is called from inside
 * a callback, so it must not free the pool under our feet. */
void pgp_deliver(pgpool *p, pgreq *r, PGresult *res, const char *err)
{
    if (!err && r->err)
        err = r->err;
    p->depth++;
    if (r->kind == REQ_ACQUIRE)
        r->acb(r->arg, NULL, err ? err : "failed");
    else
        r->cb(r->arg, res, err);
    p->depth--;
    req_free(r);
}

/* ---- leases and dispatch --------------------------------------------------------- */

void pgp_lease_free(pgpool *p, pgconn *c)
{
    if (!c)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else if (p && p->leases == c)
        p->leases = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c);
}

static pgslot *find_idle(pgpool *p)
{
    for (int i = 0; i < p->size; i++)
        if (pgslot_is_idle(&p->slots[i]))
            return &p->slots[i];
    return NULL;
}

static int find_stmt(const pgpool *p, const char *name)
{
    for (int i = 0; i < p->nstmts; i++)
        if (strcmp(p->stmts[i].name, name) == 0)
            return i;
    return -1;
}

/* Reserves s for the acquire r; its callback runs from the kick. */
static int grant(pgpool *p, pgslot *s, pgreq *r)
{
    pgconn *c = calloc(1, sizeof *c);
    if (!c)
        return CHORUS_ERR;
    c->pool = p;
    c->slot = s->idx;
    c->gen = s->gen;
    c->next = p->leases;
    if (p->leases)
        p->leases->prev = c;
    p->leases = c;
    s->leased = true;
    s->lease = c;
    s->req = r;
    s->op = OP_GRANT;
    pgp_observe(p->m_wait, pgp_mono() - r->t_start);
    pgp_kick(p);
    return CHORUS_OK;
}

void pgp_dispatch(pgpool *p)
{
    pgslot *s;
    while (!p->closing && p->qhead && (s = find_idle(p)) != NULL) {
        pgreq *r = queue_pop(p);
        if (r->kind == REQ_ACQUIRE) {
            if (grant(p, s, r) != CHORUS_OK)
                pgp_fail_later(p, r, "out of memory");
            continue;
        }
        if (pgslot_start(s, r) == CHORUS_OK) {
            pgp_observe(p->m_wait, pgp_mono() - r->t_start);
            continue;
        }
        /* Nothing reached the server: the request may wait for another connection. */
        pgp_requeue_front(p, r);
        pgslot_broken(s, PQerrorMessage(s->pg));
    }
}

/* Starts r on an idle connection, or queues it. Never calls r's callback. */
static int submit(pgpool *p, pgreq *r)
{
    pgslot *s;
    while (!p->qhead && (s = find_idle(p)) != NULL) {
        if (r->kind == REQ_ACQUIRE) {
            if (grant(p, s, r) != CHORUS_OK) {
                req_free(r);
                return CHORUS_ERR;
            }
            pgp_gauges(p);
            return CHORUS_OK;
        }
        if (pgslot_start(s, r) == CHORUS_OK) {
            pgp_observe(p->m_wait, pgp_mono() - r->t_start);
            pgp_gauges(p);
            return CHORUS_OK;
        }
        pgslot_broken(s, PQerrorMessage(s->pg));
    }
    if (p->nqueued >= p->queue_max) {
        pgp_count(p->m_err_queue_full);
        req_free(r);
        return CHORUS_AGAIN;
    }
    queue_push(p, r);
    pgp_gauges(p);
    return CHORUS_OK;
}

/* ---- loop-side work: the kick, the queue deadline, shutdown ---------------------- */

static void pool_destroy(pgpool *p)
{
    for (int i = 0; i < p->size; i++) {
        pgslot_close(&p->slots[i]);
        free(p->slots[i].prepared);
    }
    for (pgconn *c = p->leases; c; c = c->next)
        c->pool = NULL; /* the holder frees it in pgpool_release */
    for (pgconn *c = p->leases, *n; c; c = n) {
        n = c->next;
        c->prev = c->next = NULL;
    }
    ev_timer_stop(p->loop, &p->kick);
    ev_timer_stop(p->loop, &p->qtimer);
    gauge_set(p->m_idle, 0);
    gauge_set(p->m_busy, 0);
    gauge_set(p->m_connecting, 0);
    gauge_set(p->m_queue, 0);
    gauge_set(p->m_size, 0);
    for (int i = 0; i < p->nstmts; i++) {
        free(p->stmts[i].name);
        free(p->stmts[i].sql);
    }
    log_debug("pgpool %s: freed", p->name);
    free(p->stmts);
    free(p->slots);
    free(p->conninfo);
    free(p->name);
    free(p);
}

/* Runs at depth 0 only. Fails what waits, closes what is not running a statement, and
 * frees the pool once nothing is in flight. Callbacks run here may call pgpool_release
 * or get CHORUS_ERR from new requests, but cannot start anything new. */
static void close_step(pgpool *p)
{
    pgreq *r;
    ev_timer_stop(p->loop, &p->qtimer);
    while ((r = queue_pop(p)) != NULL)
        pgp_deliver(p, r, NULL, PGPOOL_ERR_CLOSING);
    while ((r = fail_pop(p)) != NULL)
        pgp_deliver(p, r, NULL, NULL);
    bool busy = false;
    for (int i = 0; i < p->size; i++) {
        pgslot *s = &p->slots[i];
        if (s->op == OP_QUERY || s->op == OP_PREPARE) {
            busy = true; /* closed by after_callback when its result is delivered */
        } else if (s->op == OP_GRANT) {
            r = s->req;
            s->req = NULL;
            pgp_lease_free(p, s->lease);
            s->lease = NULL;
            pgslot_close(s);
            pgp_deliver(p, r, NULL, PGPOOL_ERR_CLOSING);
        } else {
            pgslot_close(s);
        }
    }
    if (busy || p->fhead || p->qhead) {
        pgp_gauges(p);
        return;
    }
    pool_destroy(p);
}

static void on_kick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    pgpool *p = w->data;
    pgreq *r;
    while (!p->closing && (r = fail_pop(p)) != NULL)
        pgp_deliver(p, r, NULL, NULL);
    for (int i = 0; i < p->size && !p->closing; i++) {
        pgslot *s = &p->slots[i];
        if (s->op != OP_GRANT)
            continue;
        r = s->req;
        s->req = NULL;
        s->op = OP_NONE;
        p->depth++;
        r->acb(r->arg, s->lease, NULL);
        p->depth--;
        req_free(r);
    }
    if (p->closing) {
        close_step(p); /* may free p */
        return;
    }
    pgp_dispatch(p);
    pgp_gauges(p);
}

static void on_qtimer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    pgpool *p = w->data;
    double now = ev_now(loop);
    /* FIFO with one timeout: the head is always the oldest deadline. */
    while (!p->closing && p->qhead && p->qhead->deadline <= now + 1e-3) {
        pgreq *r = queue_pop(p);
        bool up = pgpool_ready(p);
        pgp_count(p->m_err_timeout);
        log_debug("pgpool %s: request waited %.0f ms: %s", p->name,
                  (pgp_mono() - r->t_start) * 1000, up ? "timeout" : "unavailable");
        pgp_deliver(p, r, NULL, up ? "timeout" : "unavailable");
    }
    if (p->closing)
        return; /* the kick finishes the shutdown */
    arm_qtimer(p);
    pgp_gauges(p);
}

/* ---- public API ------------------------------------------------------------------ */

pgpool *pgpool_new(struct ev_loop *loop, const pgpool_opts *o)
{
    if (!loop || !o || !o->conninfo || o->size < 1 || o->size > PGPOOL_MAX_SIZE ||
        o->queue_max < 0 || o->connect_timeout_ms <= 0 || o->backoff_min_ms <= 0 ||
        o->backoff_max_ms < o->backoff_min_ms) {
        log_error("pgpool: bad options");
        return NULL;
    }
    char *perr = NULL;
    PQconninfoOption *parsed = PQconninfoParse(o->conninfo, &perr);
    if (!parsed) {
        log_error("pgpool: bad conninfo: %s", perr ? perr : "out of memory");
        PQfreemem(perr);
        return NULL;
    }
    PQconninfoFree(parsed);

    pgpool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->loop = loop;
    p->conninfo = strdup(o->conninfo);
    p->name = strdup(o->name ? o->name : "default");
    p->size = o->size;
    p->queue_max = o->queue_max;
    p->connect_timeout = o->connect_timeout_ms / 1000.0;
    p->backoff_min_ms = o->backoff_min_ms;
    p->backoff_max_ms = o->backoff_max_ms;
    p->stmt_cap = 8;
    p->stmts = calloc((size_t)p->stmt_cap, sizeof *p->stmts);
    p->slots = calloc((size_t)p->size, sizeof *p->slots);
    bool ok = p->conninfo && p->name && p->stmts && p->slots;
    for (int i = 0; ok && i < p->size; i++) {
        pgslot_init(p, &p->slots[i], i);
        p->slots[i].prepared = calloc((size_t)p->stmt_cap, 1);
        ok = p->slots[i].prepared != NULL;
    }
    if (!ok) {
        if (p->slots)
            for (int i = 0; i < p->size; i++)
                free(p->slots[i].prepared);
        free(p->slots);
        free(p->stmts);
        free(p->conninfo);
        free(p->name);
        free(p);
        return NULL;
    }
    p->rng = (uint64_t)pgp_mono() * 1000003u ^ (uint64_t)getpid() << 32 ^ (uintptr_t)p;
    if (!p->rng)
        p->rng = 0x9e3779b97f4a7c15ULL;
    ev_init(&p->qtimer, on_qtimer);
    p->qtimer.data = p;
    ev_init(&p->kick, on_kick);
    p->kick.data = p;
    metrics_setup(p);
    gauge_set(p->m_size, p->size);
    log_info("pgpool %s: %d connections, queue %d", p->name, p->size, p->queue_max);
    for (int i = 0; i < p->size; i++)
        pgslot_connect(&p->slots[i]);
    pgp_gauges(p);
    return p;
}

int pgpool_prepare(pgpool *p, const char *name, const char *sql)
{
    if (!p || !name || !sql || !*name || p->closing || find_stmt(p, name) >= 0)
        return CHORUS_ERR;
    if (p->nstmts == p->stmt_cap) {
        int cap = p->stmt_cap * 2;
        pgstmt *st = realloc(p->stmts, (size_t)cap * sizeof *st);
        if (!st)
            return CHORUS_ERR;
        p->stmts = st;
        for (int i = 0; i < p->size; i++) {
            unsigned char *pr = realloc(p->slots[i].prepared, (size_t)cap);
            if (!pr)
                return CHORUS_ERR; /* arrays grown so far stay valid and bigger */
            memset(pr + p->stmt_cap, 0, (size_t)(cap - p->stmt_cap));
            p->slots[i].prepared = pr;
        }
        p->stmt_cap = cap;
    }
    pgstmt *st = &p->stmts[p->nstmts];
    st->name = strdup(name);
    st->sql = strdup(sql);
    if (!st->name || !st->sql) {
        free(st->name);
        free(st->sql);
        return CHORUS_ERR;
    }
    p->nstmts++;
    return CHORUS_OK;
}

static bool params_ok(int nparams, const char *const *params)
{
    return nparams >= 0 && nparams <= 65535 && (nparams == 0 || params);
}

int pgpool_query(pgpool *p, const char *stmt, int nparams, const char *const *params,
                 pgpool_result_cb cb, void *arg)
{
    if (!p || !stmt || !cb || p->closing || !params_ok(nparams, params))
        return CHORUS_ERR;
    int i = find_stmt(p, stmt);
    if (i < 0)
        return CHORUS_ERR;
    pgreq *r = req_new(p, REQ_STMT, i, NULL, nparams, params);
    if (!r)
        return CHORUS_ERR;
    r->cb = cb;
    r->arg = arg;
    return submit(p, r);
}

int pgpool_query_sql(pgpool *p, const char *sql, int nparams, const char *const *params,
                     pgpool_result_cb cb, void *arg)
{
    if (!p || !sql || !cb || p->closing || !params_ok(nparams, params))
        return CHORUS_ERR;
    pgreq *r = req_new(p, REQ_SQL, -1, sql, nparams, params);
    if (!r)
        return CHORUS_ERR;
    r->cb = cb;
    r->arg = arg;
    return submit(p, r);
}

int pgpool_acquire(pgpool *p, pgpool_acquire_cb cb, void *arg)
{
    if (!p || !cb || p->closing)
        return CHORUS_ERR;
    pgreq *r = req_new(p, REQ_ACQUIRE, -1, NULL, 0, NULL);
    if (!r)
        return CHORUS_ERR;
    r->acb = cb;
    r->arg = arg;
    return submit(p, r);
}

/* The slot behind a lease, or NULL when the lease is stale (its connection broke and
 * was replaced, or the pool is closing or gone). */
static pgslot *lease_slot(pgconn *c)
{
    if (!c || !c->pool || c->pool->closing)
        return NULL;
    pgslot *s = &c->pool->slots[c->slot];
    if (s->gen != c->gen || s->lease != c || s->state != SLOT_READY)
        return NULL;
    return s;
}

static int lease_query(pgconn *c, pgreq_kind kind, const char *stmt, const char *sql,
                       int nparams, const char *const *params, pgpool_result_cb cb, void *arg)
{
    pgslot *s = lease_slot(c);
    if (!s || !cb || !params_ok(nparams, params))
        return CHORUS_ERR;
    if (s->op != OP_NONE && s->op != OP_CALLBACK)
        return CHORUS_ERR; /* one statement in flight at a time */
    pgpool *p = c->pool;
    int idx = -1;
    if (stmt && (idx = find_stmt(p, stmt)) < 0)
        return CHORUS_ERR;
    pgreq *r = req_new(p, kind, idx, sql, nparams, params);
    if (!r)
        return CHORUS_ERR;
    r->cb = cb;
    r->arg = arg;
    if (pgslot_start(s, r) != CHORUS_OK) {
        req_free(r);
        pgslot_broken(s, PQerrorMessage(s->pg));
        pgp_gauges(p);
        return CHORUS_ERR;
    }
    pgp_gauges(p);
    return CHORUS_OK;
}

int pgconn_query(pgconn *c, const char *stmt, int nparams, const char *const *params,
                 pgpool_result_cb cb, void *arg)
{
    if (!stmt)
        return CHORUS_ERR;
    return lease_query(c, REQ_STMT, stmt, NULL, nparams, params, cb, arg);
}

int pgconn_query_sql(pgconn *c, const char *sql, int nparams, const char *const *params,
                     pgpool_result_cb cb, void *arg)
{
    if (!sql)
        return CHORUS_ERR;
    return lease_query(c, REQ_SQL, NULL, sql, nparams, params, cb, arg);
}

int pgconn_query_script(pgconn *c, const char *uses_stmt, const char *sql,
                        pgpool_result_cb cb, void *arg)
{
    if (!sql)
        return CHORUS_ERR;
    return lease_query(c, REQ_SCRIPT, uses_stmt, sql, 0, NULL, cb, arg);
}

void pgpool_release(pgconn *c)
{
    if (!c)
        return;
    pgpool *p = c->pool;
    if (!p) { /* the pool is gone; only the handle is left */
        free(c);
        return;
    }
    pgslot *s = &p->slots[c->slot];
    bool live = s->gen == c->gen && s->lease == c;
    pgp_lease_free(p, c);
    if (!live)
        return; /* its connection broke meanwhile and was replaced */
    s->lease = NULL;
    if (s->op == OP_QUERY || s->op == OP_PREPARE) {
        /* Released with a statement running: its callback still comes, then the
         * connection goes back (rolled back if needed). */
        s->release_pending = true;
        return;
    }
    s->leased = false;
    /* Inside this slot's result callback (OP_CALLBACK) after_callback takes over. */
    if (s->op == OP_NONE && s->state == SLOT_READY)
        pgslot_idle(s);
    pgp_gauges(p);
}

bool pgpool_ready(const pgpool *p)
{
    if (!p)
        return false;
    for (int i = 0; i < p->size; i++)
        if (p->slots[i].state == SLOT_READY)
            return true;
    return false;
}

int pgpool_idle(const pgpool *p)
{
    int n = 0;
    for (int i = 0; p && i < p->size; i++)
        n += pgslot_is_idle(&p->slots[i]);
    return n;
}

int pgpool_busy(const pgpool *p)
{
    int n = 0;
    for (int i = 0; p && i < p->size; i++)
        n += p->slots[i].state == SLOT_READY && !pgslot_is_idle(&p->slots[i]);
    return n;
}

int pgpool_waiting(const pgpool *p)
{
    return p ? p->nqueued : 0;
}

void pgpool_free(pgpool *p)
{
    if (!p || p->closing)
        return;
    p->closing = true;
    log_debug("pgpool %s: closing", p->name);
    if (p->depth > 0) {
        pgp_kick(p); /* we are inside one of its callbacks: finish from the loop */
        return;
    }
    close_step(p);
}
