/* pgpool.h - an asynchronous Postgres connection pool on libev.
 *
 * Every connection is non-blocking libpq (PQconnectStartParams/PQconnectPoll,
 * PQsendQueryPrepared, PQconsumeInput) driven by ev_io watchers: nothing here ever
 * blocks the loop. One query is in flight per connection. Queries that find no idle
 * connection wait in a FIFO queue bounded by opts.queue_max; past it they are refused
 * with CHORUS_AGAIN (the caller answers 503). Broken connections are replaced with
 * exponential backoff (opts.backoff_min_ms .. backoff_max_ms, with jitter).
 *
 * Statements registered with pgpool_prepare are prepared on every connection as soon
 * as it is up and before it serves anything, so callers run them by name.
 *
 * Callbacks: if a call returns CHORUS_OK its callback runs exactly once, later, from
 * the loop (never from inside the call); otherwise it never runs. Results are owned by
 * the pool and valid only during the callback (PQclear is the pool's job).
 *
 * Metrics (label pool=<opts.name>): chorus_pg_pool_connections{state=idle|busy|connecting},
 * chorus_pg_pool_size, chorus_pg_pool_queue_length, chorus_pg_pool_wait_seconds
 * (histogram: time from request to connection), chorus_pg_query_seconds (histogram),
 * chorus_pg_errors_total{kind=connect|query|timeout|queue_full}.
 */
#ifndef CHORUS_PGPOOL_H
#define CHORUS_PGPOOL_H

#include <stdbool.h>

#include <ev.h>
#include <libpq-fe.h>

typedef struct pgpool pgpool;
typedef struct pgconn pgconn;

typedef struct pgpool_opts {
    const char *conninfo;   /* libpq URI or key=value string; copied */
    const char *name;       /* metrics label and log prefix, e.g. "main"; copied */
    int size;               /* connections kept open (>= 1) */
    int queue_max;          /* waiting requests before CHORUS_AGAIN (>= 0) */
    int connect_timeout_ms; /* a connect attempt slower than this is abandoned */
    int backoff_min_ms;     /* first reconnect delay */
    int backoff_max_ms;     /* reconnect delay cap */
} pgpool_opts;

/* Called with the result of one statement. res is NULL when the query could not run
 * (connection lost, pool closing); then err says why. A res whose status is
 * PGRES_FATAL_ERROR is passed as it is (err is its message): check
 * PQresultStatus and PQresultErrorField(res, PG_DIAG_SQLSTATE). */
typedef void (*pgpool_result_cb)(void *arg, PGresult *res, const char *err);

/* Called when pgpool_acquire has a connection for the caller (conn non-NULL) or cannot
 * get one (conn NULL: pool closing or wait timed out; err says why). */
typedef void (*pgpool_acquire_cb)(void *arg, pgconn *conn, const char *err);

/* Creates the pool and starts connecting; returns NULL on bad options. */
pgpool *pgpool_new(struct ev_loop *loop, const pgpool_opts *opts);

/* Registers a statement to prepare on every connection (before pgpool_new's connections
 * are up is best; registering later prepares it on each connection before its next use).
 * name and sql are copied. Returns CHORUS_OK or CHORUS_ERR (duplicate name). */
int pgpool_prepare(pgpool *pool, const char *name, const char *sql);

/* Runs a prepared statement on any connection, then returns the connection to the pool.
 * params are text-format values (NULL for SQL NULL), copied before the call returns.
 * Returns CHORUS_OK, CHORUS_AGAIN (queue full) or CHORUS_ERR (unknown statement). */
int pgpool_query(pgpool *pool, const char *stmt, int nparams, const char *const *params,
                 pgpool_result_cb cb, void *arg);

/* Same with SQL text instead of a prepared statement name. */
int pgpool_query_sql(pgpool *pool, const char *sql, int nparams, const char *const *params,
                     pgpool_result_cb cb, void *arg);

/* Takes a connection for a sequence of statements (a transaction). The caller runs
 * pgconn_query/pgconn_query_sql one after another (one in flight at a time) and must
 * call pgpool_release exactly once. Same returns as pgpool_query. */
int pgpool_acquire(pgpool *pool, pgpool_acquire_cb cb, void *arg);

int pgconn_query(pgconn *conn, const char *stmt, int nparams, const char *const *params,
                 pgpool_result_cb cb, void *arg);
int pgconn_query_sql(pgconn *conn, const char *sql, int nparams, const char *const *params,
                     pgpool_result_cb cb, void *arg);

/* Several statements in one round trip, for a transaction whose every round trip
 * counts ("BEGIN; EXECUTE take(...)", "UPDATE ...; COMMIT"): sql goes out as it is, in
 * the simple query protocol, so it takes no parameters and every value in it must be
 * one the caller made or checked (numbers, never client text). Postgres stops at the
 * first failing statement; the callback gets that error, else the last statement's
 * result (text format). uses_stmt, when not NULL, names a registered statement the
 * script EXECUTEs: it is prepared on this connection first if it is not yet. */
int pgconn_query_script(pgconn *conn, const char *uses_stmt, const char *sql,
                        pgpool_result_cb cb, void *arg);

/* Gives the connection back. If it is still inside a transaction (a caller bailed out
 * early) the pool rolls it back before reuse; a broken connection is replaced. */
void pgpool_release(pgconn *conn);

/* True when at least one connection is up (readiness). */
bool pgpool_ready(const pgpool *pool);

/* Counts for tests and gates. */
int pgpool_idle(const pgpool *pool);
int pgpool_busy(const pgpool *pool);
int pgpool_waiting(const pgpool *pool);

/* Fails every waiting request (callbacks get NULL/err), closes idle connections at
 * once and busy ones when their query finishes, then frees the pool. Safe to call from
 * inside a pool callback: the free is deferred until the loop is back in control. */
void pgpool_free(pgpool *pool);

#endif
