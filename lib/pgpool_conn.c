/* pgpool_conn.c - one pool connection ("slot") on libev: connect with PQconnectPoll,
 * prepare the registered statements, send one statement at a time, collect its result,
 * and reconnect with backoff when the connection breaks.
 *
 * Watchers are glue: on_io and on_timer take the slot from w->data and call one step.
 * No function here calls a caller's callback except slot_deliver (from the loop, on a
 * result); everything that fails a request from elsewhere goes through the pool's
 * deferred list (pgp_fail_later), because pgslot_broken is also reached from inside
 * pgpool_query and friends. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chorus/log.h"
#include "chorus/status.h"
#include "pgpool_internal.h"

static void on_io(struct ev_loop *loop, ev_io *w, int revents);
static void on_timer(struct ev_loop *loop, ev_timer *w, int revents);
static void setup_step(pgslot *s);

/* libpq notices (NOTICE/WARNING from the server) go to the one log stream. */
static void on_notice(void *arg, const char *msg)
{
    const pgslot *s = arg;
    size_t n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n')
        n--;
    log_debug("pgpool %s: conn %d: %.*s", s->pool->name, s->idx, (int)n, msg);
}

void pgslot_init(pgpool *p, pgslot *s, int idx)
{
    memset(s, 0, sizeof *s);
    s->pool = p;
    s->idx = idx;
    s->backoff_ms = p->backoff_min_ms;
    ev_init(&s->io, on_io);
    s->io.data = s;
    ev_init(&s->timer, on_timer);
    s->timer.data = s;
}

bool pgslot_is_idle(const pgslot *s)
{
    return s->state == SLOT_READY && s->op == OP_NONE && !s->leased;
}

/* Watches fd for events. force re-arms even when nothing seems to change: during
 * PQconnectPoll libpq may close its socket and open another that gets the same number,
 * and libev must be told (ev_io_set marks the fd for re-registration). */
static void slot_watch(pgslot *s, int fd, int events, bool force)
{
    struct ev_loop *loop = s->pool->loop;
    if (!force && ev_is_active(&s->io) && s->io.fd == fd &&
        (s->io.events & (EV_READ | EV_WRITE)) == events)
        return;
    if (ev_is_active(&s->io))
        ev_io_stop(loop, &s->io);
    if (fd < 0 || !events)
        return;
    ev_io_set(&s->io, fd, events);
    ev_io_start(loop, &s->io);
}

/* Pushes buffered output. Returns CHORUS_ERR when the connection failed (the caller
 * breaks the slot); otherwise keeps watching for writability while libpq has more. */
static int slot_flush(pgslot *s)
{
    int r = PQflush(s->pg);
    if (r < 0)
        return CHORUS_ERR;
    s->want_write = r == 1;
    slot_watch(s, PQsocket(s->pg), EV_READ | (s->want_write ? EV_WRITE : 0), false);
    return CHORUS_OK;
}

/* Drops the connection: watchers stopped, partial result freed, generation bumped so
 * outstanding leases on this slot become stale. */
static void slot_drop(pgslot *s)
{
    struct ev_loop *loop = s->pool->loop;
    if (ev_is_active(&s->io))
        ev_io_stop(loop, &s->io);
    ev_timer_stop(loop, &s->timer);
    if (s->res) {
        PQclear(s->res);
        s->res = NULL;
    }
    if (s->pg) {
        PQfinish(s->pg);
        s->pg = NULL;
    }
    s->gen++;
    s->state = SLOT_DOWN;
    s->op = OP_NONE;
    s->want_write = false;
    s->leased = false;
    s->release_pending = false;
    s->lease = NULL;
}

/* Decorrelated jitter (AWS architecture blog, "Exponential Backoff and Jitter"):
 * next = min(max, uniform(min, 3 * previous)). Delays grow roughly exponentially, stay
 * within [min, max], and slots that broke together (server restart) spread out. */
static void schedule_backoff(pgslot *s)
{
    pgpool *p = s->pool;
    if (p->closing)
        return;
    double lo = p->backoff_min_ms, hi = s->backoff_ms * 3;
    if (hi < lo)
        hi = lo;
    double d = lo + (hi - lo) * pgp_random(p);
    if (d > p->backoff_max_ms)
        d = p->backoff_max_ms;
    s->backoff_ms = d;
    ev_timer_set(&s->timer, d / 1000.0, 0.);
    ev_timer_start(p->loop, &s->timer);
}

/* libpq messages span lines ("...\n\tThis probably means..."): one log line each,
 * copied because they often live in the PGconn about to be freed. */
static void clean_msg(char *out, size_t n, const char *why)
{
    size_t j = 0;
    bool space = false;
    for (const char *c = why && *why ? why : "connection lost"; *c && j + 1 < n; c++) {
        if (*c == '\n' || *c == '\t' || *c == '\r' || *c == ' ') {
            space = j > 0;
            continue;
        }
        if (space && j + 2 < n)
            out[j++] = ' ';
        space = false;
        out[j++] = *c;
    }
    out[j] = '\0';
}

static void connect_failed(pgslot *s, const char *why_raw)
{
    pgpool *p = s->pool;
    char why[512];
    clean_msg(why, sizeof why, why_raw);
    pgp_count(p->m_err_connect);
    /* The first failure of a streak is news; the following ones while the server stays
     * down would only repeat it at every backoff. */
    if (s->failures++ == 0)
        log_warn("pgpool %s: conn %d: connect failed: %s", p->name, s->idx, why);
    else
        log_debug("pgpool %s: conn %d: connect failed (%d in a row): %s", p->name, s->idx,
                  s->failures, why);
    slot_drop(s);
    schedule_backoff(s);
}

void pgslot_connect(pgslot *s)
{
    pgpool *p = s->pool;
    s->pg = PQconnectStart(p->conninfo);
    if (!s->pg) {
        connect_failed(s, "out of memory");
        return;
    }
    PQsetNoticeProcessor(s->pg, on_notice, s);
    if (PQstatus(s->pg) == CONNECTION_BAD) {
        connect_failed(s, PQerrorMessage(s->pg));
        return;
    }
    memset(s->prepared, 0, (size_t)p->stmt_cap);
    s->state = SLOT_CONNECTING;
    s->op = OP_NONE;
    ev_timer_set(&s->timer, p->connect_timeout, 0.);
    ev_timer_start(p->loop, &s->timer);
    /* libpq: after PQconnectStart, behave as if PQconnectPoll said POLLING_WRITING. */
    slot_watch(s, PQsocket(s->pg), EV_WRITE, true);
}

static void connect_poll(pgslot *s)
{
    switch (PQconnectPoll(s->pg)) {
    case PGRES_POLLING_READING:
        slot_watch(s, PQsocket(s->pg), EV_READ, true);
        return;
    case PGRES_POLLING_WRITING:
        slot_watch(s, PQsocket(s->pg), EV_WRITE, true);
        return;
    case PGRES_POLLING_OK:
        if (PQsetnonblocking(s->pg, 1) != 0) {
            connect_failed(s, PQerrorMessage(s->pg));
            return;
        }
        s->state = SLOT_SETUP;
        s->setup_next = 0;
        slot_watch(s, PQsocket(s->pg), EV_READ, true);
        setup_step(s);
        return;
    default:
        connect_failed(s, PQerrorMessage(s->pg));
        return;
    }
}

/* Prepares the next registered statement, one at a time; when none is left the slot
 * is READY and offered to the queue. Statements registered meanwhile are picked up
 * because nstmts is re-read at every step. */
static void setup_step(pgslot *s)
{
    pgpool *p = s->pool;
    while (s->setup_next < p->nstmts && s->prepared[s->setup_next])
        s->setup_next++;
    if (s->setup_next < p->nstmts) {
        pgstmt *st = &p->stmts[s->setup_next];
        s->setup_cur = s->setup_next++;
        if (!PQsendPrepare(s->pg, st->name, st->sql, 0, NULL)) {
            connect_failed(s, PQerrorMessage(s->pg));
            return;
        }
        s->op = OP_SETUP;
        if (slot_flush(s) != CHORUS_OK)
            connect_failed(s, PQerrorMessage(s->pg));
        return;
    }
    ev_timer_stop(p->loop, &s->timer);
    if (s->failures > 0)
        log_info("pgpool %s: conn %d: connected after %d failed attempts", p->name, s->idx,
                 s->failures);
    s->failures = 0;
    s->backoff_ms = p->backoff_min_ms;
    s->state = SLOT_READY;
    s->op = OP_NONE;
    pgslot_idle(s);
}

static int send_query(pgslot *s, pgreq *r)
{
    int ok;
    if (r->kind == REQ_STMT)
        ok = PQsendQueryPrepared(s->pg, s->pool->stmts[r->stmt].name, r->nparams,
                                 r->params, NULL, NULL, 0);
    else if (r->kind == REQ_SCRIPT)
        ok = PQsendQuery(s->pg, r->sql);
    else
        ok = PQsendQueryParams(s->pg, r->sql, r->nparams, NULL, r->params, NULL, NULL, 0);
    if (!ok)
        return CHORUS_ERR;
    s->op = OP_QUERY;
    return slot_flush(s);
}

int pgslot_start(pgslot *s, pgreq *r)
{
    int rc;
    s->t_sent = pgp_mono();
    if (r->stmt >= 0 && !s->prepared[r->stmt]) {
        const pgstmt *st = &s->pool->stmts[r->stmt];
        rc = PQsendPrepare(s->pg, st->name, st->sql, 0, NULL) ? CHORUS_OK : CHORUS_ERR;
        s->op = OP_PREPARE;
        if (rc == CHORUS_OK)
            rc = slot_flush(s);
    } else {
        rc = send_query(s, r);
    }
    if (rc != CHORUS_OK) {
        s->op = OP_NONE;
        return CHORUS_ERR;
    }
    s->req = r;
    return CHORUS_OK;
}

void pgslot_broken(pgslot *s, const char *why)
{
    pgpool *p = s->pool;
    char msg[512];
    clean_msg(msg, sizeof msg, why);
    if (s->state == SLOT_CONNECTING || s->state == SLOT_SETUP) {
        connect_failed(s, msg);
        return;
    }
    if (s->state != SLOT_READY)
        return;
    log_warn("pgpool %s: conn %d: connection lost: %s", p->name, s->idx, msg);
    pgreq *r = s->req;
    s->req = NULL;
    if (r && s->op == OP_GRANT) {
        /* The acquirer has not seen the connection yet: it may wait for another. */
        pgp_lease_free(p, s->lease);
        s->lease = NULL;
        pgp_requeue_front(p, r);
    } else if (r) {
        /* The statement may have run: never retried, the caller decides. */
        pgp_count(p->m_err_query);
        pgp_fail_later(p, r, msg);
    }
    slot_drop(s);
    schedule_backoff(s);
    pgp_kick(p);
}

void pgslot_close(pgslot *s)
{
    slot_drop(s);
}

void pgslot_idle(pgslot *s)
{
    pgpool *p = s->pool;
    if (p->closing) {
        pgslot_close(s);
        pgp_kick(p);
        return;
    }
    switch (PQtransactionStatus(s->pg)) {
    case PQTRANS_IDLE:
        pgp_dispatch(p);
        return;
    case PQTRANS_INTRANS:
    case PQTRANS_INERROR:
        /* A caller left a transaction open (bailed out, or BEGIN through
         * pgpool_query_sql): the next user must not inherit it. */
        log_debug("pgpool %s: conn %d: rolling back a transaction left open", p->name,
                  s->idx);
        if (!PQsendQuery(s->pg, "ROLLBACK")) {
            pgslot_broken(s, PQerrorMessage(s->pg));
            return;
        }
        s->op = OP_ROLLBACK;
        if (slot_flush(s) != CHORUS_OK)
            pgslot_broken(s, PQerrorMessage(s->pg));
        return;
    default:
        pgslot_broken(s, PQerrorMessage(s->pg));
        return;
    }
}

/* After a result callback: unless the callback already started something on this slot
 * (or the slot broke), the slot goes back to its lease holder, or to the pool. */
static void after_callback(pgslot *s)
{
    if (s->op != OP_CALLBACK)
        return;
    s->op = OP_NONE;
    if (s->release_pending) {
        s->release_pending = false;
        s->leased = false;
    }
    if (s->pool->closing) {
        pgslot_close(s);
        pgp_kick(s->pool);
    } else if (PQstatus(s->pg) == CONNECTION_BAD) {
        pgslot_broken(s, PQerrorMessage(s->pg));
    } else if (!s->leased) {
        pgslot_idle(s);
    }
}

static void slot_deliver(pgslot *s, pgreq *r, PGresult *res)
{
    pgpool *p = s->pool;
    const char *err = NULL;
    s->req = NULL;
    s->op = OP_CALLBACK;
    pgp_observe(p->m_query, pgp_mono() - s->t_sent);
    if (!res) {
        err = "no result";
        pgp_count(p->m_err_query);
    } else if (PQresultStatus(res) == PGRES_FATAL_ERROR ||
               PQresultStatus(res) == PGRES_BAD_RESPONSE) {
        err = PQresultErrorMessage(res);
        pgp_count(p->m_err_query);
    }
    pgp_deliver(p, r, res, err);
    if (res)
        PQclear(res);
    after_callback(s);
}

static bool result_ok(const PGresult *res)
{
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY ||
           st == PGRES_SINGLE_TUPLE;
}

/* The statement in flight has returned all its results. */
static void op_done(pgslot *s)
{
    pgpool *p = s->pool;
    PGresult *res = s->res;
    pgreq *r = s->req;
    s->res = NULL;
    switch (s->op) {
    case OP_SETUP:
        if (result_ok(res))
            s->prepared[s->setup_cur] = 1;
        else
            log_error("pgpool %s: preparing %s failed: %s", p->name,
                      p->stmts[s->setup_cur].name,
                      res ? PQresultErrorMessage(res) : PQerrorMessage(s->pg));
        PQclear(res);
        s->op = OP_NONE;
        setup_step(s);
        return;
    case OP_ROLLBACK: {
        bool ok = result_ok(res) && PQtransactionStatus(s->pg) == PQTRANS_IDLE;
        PQclear(res);
        s->op = OP_NONE;
        if (!ok)
            pgslot_broken(s, "ROLLBACK failed");
        else
            pgslot_idle(s);
        return;
    }
    case OP_PREPARE:
        if (result_ok(res)) {
            PQclear(res);
            s->prepared[r->stmt] = 1;
            if (send_query(s, r) != CHORUS_OK)
                pgslot_broken(s, PQerrorMessage(s->pg));
            return;
        }
        slot_deliver(s, r, res); /* the PREPARE error is the statement's error */
        return;
    case OP_QUERY:
        slot_deliver(s, r, res);
        return;
    default:
        PQclear(res);
        return;
    }
}

/* Reads what is available; completes the statement in flight when libpq has its last
 * result. PQgetResult is only called while !PQisBusy, so it never blocks. */
static void slot_read(pgslot *s)
{
    if (!PQconsumeInput(s->pg)) {
        pgslot_broken(s, PQerrorMessage(s->pg));
        return;
    }
    PGnotify *n;
    while ((n = PQnotifies(s->pg)) != NULL) /* LISTEN is not a pool feature */
        PQfreemem(n);
    if (s->want_write && slot_flush(s) != CHORUS_OK) {
        pgslot_broken(s, PQerrorMessage(s->pg));
        return;
    }
    if (s->op != OP_SETUP && s->op != OP_PREPARE && s->op != OP_QUERY &&
        s->op != OP_ROLLBACK) {
        if (PQstatus(s->pg) == CONNECTION_BAD)
            pgslot_broken(s, PQerrorMessage(s->pg));
        return;
    }
    while (!PQisBusy(s->pg)) {
        PGresult *res = PQgetResult(s->pg);
        if (!res) {
            op_done(s);
            return;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
            /* libpq would return the COPY state for ever: drop the connection. */
            PQclear(res);
            pgslot_broken(s, "COPY is not supported by pgpool");
            return;
        }
        /* One result per statement: the first error, else the last result. */
        if (!s->res) {
            s->res = res;
        } else if (PQresultStatus(s->res) == PGRES_FATAL_ERROR) {
            PQclear(res);
        } else {
            PQclear(s->res);
            s->res = res;
        }
    }
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    pgslot *s = w->data;
    if (s->state == SLOT_CONNECTING) {
        connect_poll(s);
    } else if (revents & EV_READ) {
        slot_read(s);
    } else if (revents & EV_WRITE) {
        if (slot_flush(s) != CHORUS_OK)
            pgslot_broken(s, PQerrorMessage(s->pg));
    }
    pgp_gauges(s->pool);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    pgslot *s = w->data;
    if (s->state == SLOT_DOWN)
        pgslot_connect(s);
    else if (s->state == SLOT_CONNECTING || s->state == SLOT_SETUP)
        connect_failed(s, "connect timeout");
    pgp_gauges(s->pool);
}
