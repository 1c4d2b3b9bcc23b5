/* pgpool_internal.h - what pgpool.c (the pool: queue, leases, public API, shutdown)
 * and pgpool_conn.c (one connection's life: connect, prepare, send, read) share.
 *
 * Ownership in one paragraph: the pool owns its slots (a fixed array, so a slot
 * address is stable for the pool's whole life), its statements and every request
 * until the request's callback has returned. A slot owns its PGconn, its watchers and
 * the request in flight on it. A lease (struct pgconn) is the caller's handle on an
 * acquired slot: it names the slot by index and generation, never by pointer, so a
 * lease whose connection broke and was replaced is recognised as stale. */
#ifndef CHORUS_PGPOOL_INTERNAL_H
#define CHORUS_PGPOOL_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "chorus/metrics.h"
#include "chorus/pgpool.h"

typedef enum pgreq_kind { REQ_STMT, REQ_SQL, REQ_SCRIPT, REQ_ACQUIRE } pgreq_kind;

/* One caller request; a single allocation holding the params and SQL copies. */
typedef struct pgreq {
    struct pgreq *next;
    pgreq_kind kind;
    int stmt;               /* REQ_STMT, or the one a REQ_SCRIPT runs: index in
                               pool->stmts (-1: none) */
    const char *sql;        /* REQ_SQL, REQ_SCRIPT */
    int nparams;
    const char **params;
    pgpool_result_cb cb;
    pgpool_acquire_cb acb;
    void *arg;
    double deadline;        /* ev_now time after which waiting in the queue fails */
    double t_start;         /* monotonic time of the request (wait histogram) */
    char *err;              /* reason, while on the deferred-failure list (malloc) */
} pgreq;

typedef struct pgstmt {
    char *name;
    char *sql;
} pgstmt;

typedef enum pgslot_state {
    SLOT_DOWN,       /* no connection; the timer is the backoff (unless closing) */
    SLOT_CONNECTING, /* PQconnectPoll in progress; the timer is the connect timeout */
    SLOT_SETUP,      /* connected, preparing registered statements; timer still runs */
    SLOT_READY,      /* serving; op says what is in flight */
} pgslot_state;

typedef enum pgslot_op {
    OP_NONE,     /* nothing in flight (idle, or leased and waiting for the caller) */
    OP_SETUP,    /* PQsendPrepare of a registered statement during SETUP */
    OP_PREPARE,  /* lazy PQsendPrepare before req's statement runs here first */
    OP_QUERY,    /* req's statement in flight */
    OP_ROLLBACK, /* ROLLBACK of a transaction a caller left open */
    OP_GRANT,    /* leased to req (an acquire) whose callback has not run yet */
    OP_CALLBACK, /* a result callback for this slot is running right now */
} pgslot_op;

typedef struct pgslot {
    pgpool *pool;
    int idx;
    unsigned gen;          /* bumped whenever the PGconn is dropped */
    PGconn *pg;
    pgslot_state state;
    pgslot_op op;
    ev_io io;
    ev_timer timer;
    bool want_write;       /* PQflush returned 1: also watch for writability */
    bool leased;
    bool release_pending;  /* released while its query ran: release after the callback */
    pgconn *lease;         /* the handle given out, while leased and not released */
    pgreq *req;            /* request in flight (or granted) */
    PGresult *res;         /* result being collected for req */
    unsigned char *prepared; /* [pool->stmt_cap]: statement i is prepared here */
    int setup_next;        /* next statement index to consider during SETUP */
    int setup_cur;         /* statement being prepared by OP_SETUP */
    int failures;          /* consecutive failed connect attempts */
    double backoff_ms;     /* previous backoff delay (decorrelated jitter) */
    double t_sent;         /* monotonic time req was sent (query histogram) */
} pgslot;

struct pgconn {
    pgpool *pool;          /* NULL once the pool has been freed */
    pgconn *prev, *next;   /* the pool's list of leases given out */
    int slot;
    unsigned gen;
};

struct pgpool {
    struct ev_loop *loop;
    char *conninfo;
    char *name;
    int size;
    int queue_max;
    double connect_timeout;  /* seconds; also the longest wait in the queue */
    double backoff_min_ms, backoff_max_ms;
    pgslot *slots;
    pgstmt *stmts;
    int nstmts, stmt_cap;
    pgreq *qhead, *qtail;    /* requests waiting for a connection (FIFO) */
    int nqueued;
    pgreq *fhead, *ftail;    /* requests to fail from the loop (kick) */
    pgconn *leases;
    ev_timer qtimer;         /* deadline of the oldest waiting request */
    ev_timer kick;           /* deferred work: grants, failures, closing */
    bool closing;
    int depth;               /* > 0 while a caller's callback runs */
    uint64_t rng;
    metrics_series *m_idle, *m_busy, *m_connecting, *m_size, *m_queue;
    metrics_series *m_wait, *m_query;
    metrics_series *m_err_connect, *m_err_query, *m_err_timeout, *m_err_queue_full;
};

/* pgpool.c, for the slots */
double pgp_mono(void);
void pgp_kick(pgpool *p);
void pgp_dispatch(pgpool *p);
void pgp_gauges(pgpool *p);
void pgp_count(metrics_series *s);
void pgp_observe(metrics_series *s, double v);
void pgp_requeue_front(pgpool *p, pgreq *r);
void pgp_fail_later(pgpool *p, pgreq *r, const char *err);
void pgp_deliver(pgpool *p, pgreq *r, PGresult *res, const char *err);
void pgp_lease_free(pgpool *p, pgconn *c);
double pgp_random(pgpool *p); /* uniform in [0, 1) */

/* pgpool_conn.c */
void pgslot_init(pgpool *p, pgslot *s, int idx);
void pgslot_connect(pgslot *s);
/* Sends r on a READY slot with nothing in flight. On CHORUS_ERR nothing is attached to
 * the slot and the connection is unusable: the caller disposes of r, then calls
 * pgslot_broken. */
int pgslot_start(pgslot *s, pgreq *r);
/* The connection failed: fails or requeues what was in flight (never calls a callback
 * itself), drops the connection and schedules a reconnect unless the pool is closing. */
void pgslot_broken(pgslot *s, const char *why);
/* A READY slot with nothing in flight and no lease: rolls back a leftover transaction,
 * or offers the slot to the queue; closes it when the pool is closing. */
void pgslot_idle(pgslot *s);
/* Pool closing: drops the connection and stops the watchers, no reconnect. */
void pgslot_close(pgslot *s);
bool pgslot_is_idle(const pgslot *s);

#endif
