/* test_pgpool.c - the asynchronous Postgres pool against a real server (DATABASE_URL).
 *
 * Every test runs its own libev loop with a deadline, so a broken pool fails a test
 * instead of hanging it. Callbacks only record what they saw; the assertions run after
 * the loop, on those records (libuv's habit: count callbacks, assert after the run).
 * Tables are suffixed with the pid: other test programs may share the database. */
#include <arpa/inet.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ev.h>

#include "chorus/buf.h"
#include "chorus/metrics.h"
#include "chorus/pgpool.h"
#include "chorus/status.h"
#include "testloop.h"
#include "testutil.h"

/* ---- helpers ---------------------------------------------------------------------- */

typedef struct qres {
    int called;
    bool res_null;
    ExecStatusType status;
    char sqlstate[6];
    char value[64];  /* first column of the first row, "<null>" for SQL NULL */
    char err[512];
    int64_t at_ms;   /* when the callback ran */
} qres;

static void on_result(void *arg, PGresult *res, const char *err)
{
    qres *q = arg;
    q->called++;
    q->at_ms = test_now_ms();
    q->res_null = res == NULL;
    snprintf(q->err, sizeof q->err, "%s", err ? err : "");
    if (!res)
        return;
    q->status = PQresultStatus(res);
    const char *ss = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    snprintf(q->sqlstate, sizeof q->sqlstate, "%s", ss ? ss : "");
    if (q->status == PGRES_TUPLES_OK && PQntuples(res) > 0 && PQnfields(res) > 0)
        snprintf(q->value, sizeof q->value, "%s",
                 PQgetisnull(res, 0, 0) ? "<null>" : PQgetvalue(res, 0, 0));
}

/* The shared loop spinner, under this file's historical name. */
static bool run_until(struct ev_loop *loop, test_cond_fn cond, void *arg, int timeout_ms)
{
    return test_run_until(loop, cond, arg, timeout_ms);
}

/* Runs the loop until it has no active watcher left; the deadline timer is unref'd so
 * it does not count. Returns false when the deadline hit first (something still runs:
 * a freed pool would have left a watcher behind). */
static void on_drain_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    *(bool *)w->data = true;
    ev_break(loop, EVBREAK_ONE);
}

static bool drain_loop(struct ev_loop *loop, int timeout_ms)
{
    bool timed_out = false;
    ev_timer deadline;
    ev_timer_init(&deadline, on_drain_deadline, timeout_ms / 1000.0, 0.);
    deadline.data = &timed_out;
    ev_now_update(loop);
    ev_timer_start(loop, &deadline);
    ev_unref(loop);
    ev_run(loop, 0);
    ev_ref(loop);
    ev_timer_stop(loop, &deadline);
    return !timed_out;
}

typedef struct count_cond {
    const qres *q;
    int n;
} count_cond;

/* All n records have been called back. */
static bool all_called(void *arg)
{
    const count_cond *c = arg;
    for (int i = 0; i < c->n; i++)
        if (!c->q[i].called)
            return false;
    return true;
}

static bool pool_full_idle(void *arg)
{
    pgpool *p = arg;
    return pgpool_idle(p) >= 1 && pgpool_busy(p) == 0 && pgpool_waiting(p) == 0;
}

typedef struct idle_n {
    pgpool *p;
    int n;
} idle_n;

static bool pool_idle_n(void *arg)
{
    idle_n *c = arg;
    return pgpool_idle(c->p) == c->n;
}

static pgpool *new_pool(struct ev_loop *loop, const char *conninfo, const char *name, int size,
                        int queue_max, int connect_timeout_ms)
{
    pgpool_opts o = {
        .conninfo = conninfo,
        .name = name,
        .size = size,
        .queue_max = queue_max,
        .connect_timeout_ms = connect_timeout_ms,
        .backoff_min_ms = 20,
        .backoff_max_ms = 200,
    };
    pgpool *p = pgpool_new(loop, &o);
    assert_non_null(p);
    return p;
}

/* A pool on DATABASE_URL with every connection up and idle. */
static pgpool *ready_pool(struct ev_loop *loop, const char *name, int size, int queue_max)
{
    pgpool *p = new_pool(loop, test_env("DATABASE_URL"), name, size, queue_max, 5000);
    idle_n c = {p, size};
    assert_true(run_until(loop, pool_idle_n, &c, 10000));
    assert_true(pgpool_ready(p));
    return p;
}

/* Frees the pool and checks that the loop then ends by itself. */
static void free_pool(struct ev_loop *loop, pgpool *p)
{
    pgpool_free(p);
    assert_true(drain_loop(loop, 10000));
}

/* The value of one rendered metric line, e.g. name{pool="x",kind="query"}; -1 if absent. */
static double metric(const char *series)
{
    buf b;
    buf_init(&b, 0);
    assert_int_equal(metrics_render(&b), CHORUS_OK);
    double v = -1;
    size_t n = strlen(series);
    for (const char *line = b.data; line && *line;) {
        if (strncmp(line, series, n) == 0 && line[n] == ' ') {
            v = strtod(line + n + 1, NULL);
            break;
        }
        const char *nl = strchr(line, '\n');
        line = nl ? nl + 1 : NULL;
    }
    buf_free(&b);
    return v;
}

/* Blocking admin connection for setup and checks, outside the pool. */
static PGconn *admin(void)
{
    PGconn *c = PQconnectdb(test_env("DATABASE_URL"));
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("admin connect: %s", PQerrorMessage(c));
    return c;
}

static void admin_exec(const char *sql)
{
    PGconn *c = admin();
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    PQfinish(c);
}

static long admin_long(const char *sql)
{
    PGconn *c = admin();
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    long v = atol(PQgetvalue(r, 0, 0));
    PQclear(r);
    PQfinish(c);
    return v;
}

static int setup(void **state)
{
    *state = ev_loop_new(EVFLAG_AUTO);
    return *state ? 0 : -1;
}

static int teardown(void **state)
{
    ev_loop_destroy(*state);
    metrics_reset();
    return 0;
}

/* ---- tests ------------------------------------------------------------------------ */

/* A plain SQL query returns its row; the callback never runs inside the call. */
static void test_simple_query(void **state)
{
    struct ev_loop *loop = *state;
    pgpool *p = ready_pool(loop, "t_simple", 2, 10);
    assert_int_equal(pgpool_idle(p), 2);
    qres q = {0};
    assert_int_equal(pgpool_query_sql(p, "SELECT 41 + 1", 0, NULL, on_result, &q), CHORUS_OK);
    assert_int_equal(q.called, 0);
    assert_int_equal(pgpool_busy(p), 1);
    count_cond c = {&q, 1};
    assert_true(run_until(loop, all_called, &c, 5000));
    assert_int_equal(q.called, 1);
    assert_int_equal(q.status, PGRES_TUPLES_OK);
    assert_string_equal(q.value, "42");
    assert_string_equal(q.err, "");
    assert_true(run_until(loop, pool_full_idle, p, 2000));
    assert_int_equal(pgpool_idle(p), 2);
    assert_true(metric("chorus_pg_pool_size{pool=\"t_simple\"}") == 2);
    assert_true(metric("chorus_pg_query_seconds_count{pool=\"t_simple\"}") == 1);
    assert_true(metric("chorus_pg_pool_wait_seconds_count{pool=\"t_simple\"}") == 1);
    free_pool(loop, p);
}

/* Registered statements run by name with text params and SQL NULL; one registered late
 * is prepared on first use; duplicates and unknown names are refused; a statement
 * whose SQL is wrong reports the server's error at query time. */
static void test_prepared(void **state)
{
    struct ev_loop *loop = *state;
    pgpool *p = new_pool(loop, test_env("DATABASE_URL"), "t_prep", 2, 10, 5000);
    assert_int_equal(pgpool_prepare(p, "add", "SELECT $1::int + $2::int"), CHORUS_OK);
    assert_int_equal(pgpool_prepare(p, "isnull", "SELECT $1::text IS NULL"), CHORUS_OK);
    assert_int_equal(pgpool_prepare(p, "broken", "SELECT * FROM no_such_table_xyz"), CHORUS_OK);
    assert_int_equal(pgpool_prepare(p, "add", "SELECT 1"), CHORUS_ERR);
    idle_n up = {p, 2};
    assert_true(run_until(loop, pool_idle_n, &up, 10000));
    /* Registered after the connections are up: more than the initial capacity. */
    char name[32];
    for (int i = 0; i < 12; i++) {
        snprintf(name, sizeof name, "late%d", i);
        assert_int_equal(pgpool_prepare(p, name, "SELECT $1::int * 10"), CHORUS_OK);
    }

    qres q[6] = {{0}};
    const char *add[] = {"2", "3"};
    const char *nul[] = {NULL};
    const char *notnul[] = {"x"};
    const char *seven[] = {"7"};
    assert_int_equal(pgpool_query(p, "add", 2, add, on_result, &q[0]), CHORUS_OK);
    assert_int_equal(pgpool_query(p, "isnull", 1, nul, on_result, &q[1]), CHORUS_OK);
    assert_int_equal(pgpool_query(p, "isnull", 1, notnul, on_result, &q[2]), CHORUS_OK);
    assert_int_equal(pgpool_query(p, "late11", 1, seven, on_result, &q[3]), CHORUS_OK);
    assert_int_equal(pgpool_query(p, "broken", 0, NULL, on_result, &q[4]), CHORUS_OK);
    assert_int_equal(pgpool_query(p, "late11", 1, seven, on_result, &q[5]), CHORUS_OK);
    assert_int_equal(pgpool_query(p, "nope", 0, NULL, on_result, &q[0]), CHORUS_ERR);
    count_cond c = {q, 6};
    assert_true(run_until(loop, all_called, &c, 5000));
    assert_string_equal(q[0].value, "5");
    assert_string_equal(q[1].value, "t");
    assert_string_equal(q[2].value, "f");
    assert_string_equal(q[3].value, "70");
    assert_int_equal(q[4].status, PGRES_FATAL_ERROR);
    assert_string_equal(q[4].sqlstate, "42P01");
    assert_true(q[4].err[0] != '\0');
    assert_string_equal(q[5].value, "70");
    for (int i = 0; i < 6; i++)
        assert_int_equal(q[i].called, 1);
    free_pool(loop, p);
}

#define MANY 1000

/* 1000 queries through 4 connections: every one answered, with its own result. */
static void test_many_concurrent(void **state)
{
    struct ev_loop *loop = *state;
    pgpool *p = ready_pool(loop, "t_many", 4, MANY);
    assert_int_equal(pgpool_prepare(p, "twice", "SELECT $1::int * 2"), CHORUS_OK);
    qres *q = calloc(MANY, sizeof *q);
    assert_non_null(q);
    for (int i = 0; i < MANY; i++) {
        char v[16];
        snprintf(v, sizeof v, "%d", i);
        const char *params[] = {v};
        int rc = i % 2 ? pgpool_query(p, "twice", 1, params, on_result, &q[i])
                       : pgpool_query_sql(p, "SELECT $1::int * 2", 1, params, on_result, &q[i]);
        assert_int_equal(rc, CHORUS_OK);
    }
    assert_int_equal(pgpool_busy(p), 4);
    assert_int_equal(pgpool_waiting(p), MANY - 4);
    assert_true(metric("chorus_pg_pool_queue_length{pool=\"t_many\"}") == MANY - 4);
    count_cond c = {q, MANY};
    assert_true(run_until(loop, all_called, &c, 30000));
    for (int i = 0; i < MANY; i++) {
        char want[16];
        snprintf(want, sizeof want, "%d", i * 2);
        assert_int_equal(q[i].called, 1);
        assert_int_equal(q[i].status, PGRES_TUPLES_OK);
        assert_string_equal(q[i].value, want);
    }
    assert_true(run_until(loop, pool_full_idle, p, 2000));
    assert_int_equal(pgpool_idle(p), 4);
    assert_int_equal(pgpool_waiting(p), 0);
    assert_true(metric("chorus_pg_query_seconds_count{pool=\"t_many\"}") == MANY);
    free(q);
    free_pool(loop, p);
}

static void on_acquire_unexpected(void *arg, pgconn *conn, const char *err)
{
    (void)err;
    int *n = arg;
    (*n)++;
    if (conn)
        pgpool_release(conn);
}

/* Past queue_max a request is refused with CHORUS_AGAIN, counted, and its callback
 * never runs; the accepted ones all complete. */
static void test_queue_bound(void **state)
{
    struct ev_loop *loop = *state;
    pgpool *p = ready_pool(loop, "t_bound", 1, 2);
    qres q[4] = {{0}};
    assert_int_equal(pgpool_query_sql(p, "SELECT pg_sleep(0.2)", 0, NULL, on_result, &q[0]),
                     CHORUS_OK);
    assert_int_equal(pgpool_query_sql(p, "SELECT 1", 0, NULL, on_result, &q[1]), CHORUS_OK);
    assert_int_equal(pgpool_query_sql(p, "SELECT 2", 0, NULL, on_result, &q[2]), CHORUS_OK);
    assert_int_equal(pgpool_waiting(p), 2);
    assert_int_equal(pgpool_query_sql(p, "SELECT 3", 0, NULL, on_result, &q[3]), CHORUS_AGAIN);
    int acquired = 0;
    assert_int_equal(pgpool_acquire(p, on_acquire_unexpected, &acquired), CHORUS_AGAIN);
    assert_true(metric("chorus_pg_errors_total{pool=\"t_bound\",kind=\"queue_full\"}") == 2);
    count_cond c = {q, 3};
    assert_true(run_until(loop, all_called, &c, 5000));
    run_until(loop, NULL, NULL, 50);
    assert_int_equal(q[3].called, 0);
    assert_int_equal(acquired, 0);
    assert_string_equal(q[1].value, "1");
    assert_string_equal(q[2].value, "2");
    free_pool(loop, p);
}

/* A transaction on an acquired connection: BEGIN, INSERT, COMMIT step by step. */
typedef struct txn {
    pgconn *conn;
    const char *table;
    bool commit;        /* false: release in the middle of the transaction */
    bool release_early; /* release while the INSERT is still running */
    int step;
    int results;
    char err[256];
    bool done;
} txn;

static void txn_next(void *arg, PGresult *res, const char *err);

static void txn_step(txn *t)
{
    char sql[160];
    int rc = CHORUS_OK;
    switch (t->step++) {
    case 0:
        rc = pgconn_query_sql(t->conn, "BEGIN", 0, NULL, txn_next, t);
        break;
    case 1: {
        const char *v[] = {"hello"};
        snprintf(sql, sizeof sql, "INSERT INTO %s (v) SELECT $1 FROM pg_sleep(%s)", t->table,
                 t->release_early ? "0.1" : "0");
        rc = pgconn_query_sql(t->conn, sql, 1, v, txn_next, t);
        if (rc == CHORUS_OK && t->release_early) {
            pgpool_release(t->conn); /* the INSERT's callback must still come */
            t->conn = NULL;
        }
        break;
    }
    case 2:
        if (t->conn) {
            if (t->commit) {
                rc = pgconn_query_sql(t->conn, "COMMIT", 0, NULL, txn_next, t);
                break;
            }
            pgpool_release(t->conn); /* bail out inside the transaction */
            t->conn = NULL;
        }
        t->done = true;
        break;
    default:
        pgpool_release(t->conn);
        t->conn = NULL;
        t->done = true;
        break;
    }
    if (rc != CHORUS_OK) {
        snprintf(t->err, sizeof t->err, "step %d refused", t->step);
        t->done = true;
    }
}

static void txn_next(void *arg, PGresult *res, const char *err)
{
    txn *t = arg;
    t->results++;
    if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
        snprintf(t->err, sizeof t->err, "step %d: %s", t->step, err ? err : "?");
        if (t->conn)
            pgpool_release(t->conn);
        t->conn = NULL;
        t->done = true;
        return;
    }
    txn_step(t);
}

static void txn_acquired(void *arg, pgconn *conn, const char *err)
{
    txn *t = arg;
    if (!conn) {
        snprintf(t->err, sizeof t->err, "acquire: %s", err ? err : "?");
        t->done = true;
        return;
    }
    t->conn = conn;
    txn_step(t);
}

static bool txn_done(void *arg)
{
    return ((txn *)arg)->done;
}

static long pool_count(struct ev_loop *loop, pgpool *p, const char *table)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", table);
    qres q = {0};
    assert_int_equal(pgpool_query_sql(p, sql, 0, NULL, on_result, &q), CHORUS_OK);
    count_cond c = {&q, 1};
    assert_true(run_until(loop, all_called, &c, 5000));
    assert_int_equal(q.status, PGRES_TUPLES_OK);
    return atol(q.value);
}

/* Committed work is visible; a connection released inside a transaction (also with a
 * statement still running) is rolled back before anyone else uses it. */
static void test_transaction(void **state)
{
    struct ev_loop *loop = *state;
    char table[64], sql[256];
    snprintf(table, sizeof table, "pgpool_txn_%d", (int)getpid());
    snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s; CREATE TABLE %s (v text)", table, table);
    admin_exec(sql);
    /* One connection: if the rollback were skipped, the next user would inherit the
     * open transaction and see its own uncommitted rows. */
    pgpool *p = ready_pool(loop, "t_txn", 1, 10);

    txn t1 = {.table = table, .commit = true};
    assert_int_equal(pgpool_acquire(p, txn_acquired, &t1), CHORUS_OK);
    assert_null(t1.conn); /* granted from the loop, not inside the call */
    assert_true(run_until(loop, txn_done, &t1, 5000));
    assert_string_equal(t1.err, "");
    assert_int_equal(t1.results, 3);

    txn t2 = {.table = table, .commit = false};
    assert_int_equal(pgpool_acquire(p, txn_acquired, &t2), CHORUS_OK);
    assert_true(run_until(loop, txn_done, &t2, 5000));
    assert_string_equal(t2.err, "");
    assert_int_equal(pool_count(loop, p, table), 1);

    txn t3 = {.table = table, .commit = false, .release_early = true};
    assert_int_equal(pgpool_acquire(p, txn_acquired, &t3), CHORUS_OK);
    assert_true(run_until(loop, txn_done, &t3, 5000));
    assert_string_equal(t3.err, "");
    assert_int_equal(t3.results, 2);
    assert_int_equal(pool_count(loop, p, table), 1);

    /* A transaction opened through pgpool_query_sql is rolled back as well. */
    qres q = {0};
    assert_int_equal(pgpool_query_sql(p, "BEGIN", 0, NULL, on_result, &q), CHORUS_OK);
    qres q2 = {0};
    /* SAVEPOINT outside a transaction block fails with 25P01: proof of the rollback. */
    assert_int_equal(pgpool_query_sql(p, "SAVEPOINT s", 0, NULL, on_result, &q2), CHORUS_OK);
    count_cond c = {&q2, 1};
    assert_true(run_until(loop, all_called, &c, 5000));
    assert_int_equal(q.status, PGRES_COMMAND_OK);
    assert_int_equal(q2.status, PGRES_FATAL_ERROR);
    assert_string_equal(q2.sqlstate, "25P01");

    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", table);
    assert_int_equal(admin_long(sql), 1);
    free_pool(loop, p);
    snprintf(sql, sizeof sql, "DROP TABLE %s", table);
    admin_exec(sql);
}

/* A failing statement delivers PGRES_FATAL_ERROR with its SQLSTATE and err; the
 * connection stays usable, also after an error inside a transaction. */
static void test_sql_error(void **state)
{
    struct ev_loop *loop = *state;
    pgpool *p = ready_pool(loop, "t_err", 1, 10);
    qres q[3] = {{0}};
    assert_int_equal(pgpool_query_sql(p, "SELECT 1/0", 0, NULL, on_result, &q[0]), CHORUS_OK);
    assert_int_equal(pgpool_query_sql(p, "SELEC 1", 0, NULL, on_result, &q[1]), CHORUS_OK);
    assert_int_equal(pgpool_query_sql(p, "SELECT 'ok'", 0, NULL, on_result, &q[2]), CHORUS_OK);
    count_cond c = {q, 3};
    assert_true(run_until(loop, all_called, &c, 5000));
    assert_false(q[0].res_null);
    assert_int_equal(q[0].status, PGRES_FATAL_ERROR);
    assert_string_equal(q[0].sqlstate, "22012");
    assert_non_null(strstr(q[0].err, "division by zero"));
    assert_int_equal(q[1].status, PGRES_FATAL_ERROR);
    assert_string_equal(q[1].sqlstate, "42601");
    assert_string_equal(q[2].value, "ok");
    assert_true(metric("chorus_pg_errors_total{pool=\"t_err\",kind=\"query\"}") == 2);

    /* BEGIN; a failing statement; release: the aborted transaction is rolled back. */
    txn t = {.table = "no_such_table_pgpool", .commit = true};
    assert_int_equal(pgpool_acquire(p, txn_acquired, &t), CHORUS_OK);
    assert_true(run_until(loop, txn_done, &t, 5000));
    assert_non_null(strstr(t.err, "step 2"));
    qres after = {0};
    assert_int_equal(pgpool_query_sql(p, "SELECT 'fine'", 0, NULL, on_result, &after),
                     CHORUS_OK);
    count_cond c2 = {&after, 1};
    assert_true(run_until(loop, all_called, &c2, 5000));
    assert_string_equal(after.value, "fine");
    free_pool(loop, p);
}

static void terminate_backend(const char *pid)
{
    char sql[96];
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%s)", pid);
    admin_exec(sql);
}

/* pg_terminate_backend only signals: wait until the backend has really exited. */
static void wait_backend_gone(const char *pid)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", pid);
    for (int i = 0; i < 500 && admin_long(sql) > 0; i++)
        usleep(10000);
    assert_int_equal(admin_long(sql), 0);
}

typedef struct down_up {
    pgpool *p;
    bool seen_down;
} down_up;

/* The pool lost its connection (seen between two checks) and has a new one idle. */
static bool went_down_and_up(void *arg)
{
    down_up *d = arg;
    if (pgpool_idle(d->p) == 0)
        d->seen_down = true;
    return d->seen_down && pgpool_idle(d->p) == 1;
}

/* A backend killed while idle is replaced; one killed mid-query fails that query's
 * callback (res NULL, or the server's 57P01 error) and is replaced; later queries run. */
static void test_reconnect(void **state)
{
    struct ev_loop *loop = *state;
    pgpool *p = ready_pool(loop, "t_reconn", 1, 10);
    assert_int_equal(pgpool_prepare(p, "pid", "SELECT pg_backend_pid()"), CHORUS_OK);

    qres q1 = {0};
    assert_int_equal(pgpool_query(p, "pid", 0, NULL, on_result, &q1), CHORUS_OK);
    count_cond c1 = {&q1, 1};
    assert_true(run_until(loop, all_called, &c1, 5000));
    assert_int_equal(q1.status, PGRES_TUPLES_OK);

    /* Killed while idle: the pool notices on its own and reconnects. */
    terminate_backend(q1.value);
    wait_backend_gone(q1.value);
    down_up du = {p, false};
    assert_true(run_until(loop, went_down_and_up, &du, 5000));
    qres q2 = {0};
    assert_int_equal(pgpool_query(p, "pid", 0, NULL, on_result, &q2), CHORUS_OK);
    count_cond c2 = {&q2, 1};
    assert_true(run_until(loop, all_called, &c2, 5000));
    assert_int_equal(q2.status, PGRES_TUPLES_OK);
    assert_string_not_equal(q2.value, q1.value);

    /* Killed in the middle of a statement. */
    qres slow = {0}, next = {0};
    assert_int_equal(pgpool_query_sql(p, "SELECT pg_sleep(5)", 0, NULL, on_result, &slow),
                     CHORUS_OK);
    assert_int_equal(pgpool_query(p, "pid", 0, NULL, on_result, &next), CHORUS_OK);
    run_until(loop, NULL, NULL, 100); /* let the sleep start */
    terminate_backend(q2.value);
    count_cond c3 = {&slow, 1};
    assert_true(run_until(loop, all_called, &c3, 5000));
    assert_int_equal(slow.called, 1);
    assert_true(slow.res_null || strcmp(slow.sqlstate, "57P01") == 0);
    assert_true(slow.err[0] != '\0');
    /* The queued statement runs on the replacement connection. */
    count_cond c4 = {&next, 1};
    assert_true(run_until(loop, all_called, &c4, 5000));
    assert_int_equal(next.status, PGRES_TUPLES_OK);
    assert_string_not_equal(next.value, q2.value);
    assert_true(pgpool_ready(p));
    free_pool(loop, p);
}

typedef struct acq_rec {
    int called;
    bool got_conn;
    char err[128];
} acq_rec;

static void on_acquire_rec(void *arg, pgconn *conn, const char *err)
{
    acq_rec *a = arg;
    a->called++;
    a->got_conn = conn != NULL;
    snprintf(a->err, sizeof a->err, "%s", err ? err : "");
    if (conn)
        pgpool_release(conn);
}

static bool acq_called(void *arg)
{
    return ((acq_rec *)arg)->called > 0;
}

/* Down server (refused port, or a port that accepts and never answers): the pool is
 * not ready, waiting requests fail with "unavailable" within the connect timeout, the
 * failures are counted, and freeing the pool leaves nothing running. */
static void check_down(struct ev_loop *loop, const char *conninfo, const char *name)
{
    pgpool *p = new_pool(loop, conninfo, name, 2, 10, 300);
    run_until(loop, NULL, NULL, 50);
    assert_false(pgpool_ready(p));
    qres q[3] = {{0}};
    acq_rec a = {0};
    int64_t t0 = test_now_ms();
    for (int i = 0; i < 3; i++)
        assert_int_equal(pgpool_query_sql(p, "SELECT 1", 0, NULL, on_result, &q[i]), CHORUS_OK);
    assert_int_equal(pgpool_acquire(p, on_acquire_rec, &a), CHORUS_OK);
    assert_int_equal(pgpool_waiting(p), 4);
    count_cond c = {q, 3};
    assert_true(run_until(loop, all_called, &c, 3000));
    assert_true(run_until(loop, acq_called, &a, 1000));
    for (int i = 0; i < 3; i++) {
        assert_int_equal(q[i].called, 1);
        assert_true(q[i].res_null);
        assert_string_equal(q[i].err, "unavailable");
        assert_true(q[i].at_ms - t0 < 1500);
    }
    assert_int_equal(a.called, 1);
    assert_false(a.got_conn);
    assert_string_equal(a.err, "unavailable");
    assert_int_equal(pgpool_waiting(p), 0);
    assert_false(pgpool_ready(p));
    char s[128];
    snprintf(s, sizeof s, "chorus_pg_errors_total{pool=\"%s\",kind=\"timeout\"}", name);
    assert_true(metric(s) == 4);
    snprintf(s, sizeof s, "chorus_pg_errors_total{pool=\"%s\",kind=\"connect\"}", name);
    assert_true(metric(s) >= 2);
    free_pool(loop, p);
}

static void test_server_down(void **state)
{
    char conninfo[128];
    snprintf(conninfo, sizeof conninfo,
             "host=127.0.0.1 port=%d user=chorus dbname=chorus_test", test_free_port());
    check_down(*state, conninfo, "t_down");
}

static void test_server_silent(void **state)
{
    /* Accepts TCP connections (the kernel does, from the backlog) and never answers. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 64), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    char conninfo[128];
    snprintf(conninfo, sizeof conninfo,
             "host=127.0.0.1 port=%d user=chorus dbname=chorus_test sslmode=disable",
             ntohs(a.sin_port));
    check_down(*state, conninfo, "t_silent");
    close(fd);
}

/* pgpool_free with statements running and others waiting: the waiting ones are failed
 * with "pool closing", the running ones deliver their results, and the loop then ends
 * (no watcher left behind). */
static void test_free_in_flight(void **state)
{
    struct ev_loop *loop = *state;
    pgpool *p = ready_pool(loop, "t_free", 2, 20);
    qres q[7] = {{0}};
    for (int i = 0; i < 7; i++)
        assert_int_equal(
            pgpool_query_sql(p, "SELECT 'done' FROM pg_sleep(0.1)", 0, NULL, on_result, &q[i]),
            CHORUS_OK);
    assert_int_equal(pgpool_waiting(p), 5);
    pgpool_free(p);
    for (int i = 2; i < 7; i++) {
        assert_int_equal(q[i].called, 1);
        assert_true(q[i].res_null);
        assert_string_equal(q[i].err, "pool closing");
    }
    assert_true(drain_loop(loop, 5000));
    for (int i = 0; i < 2; i++) {
        assert_int_equal(q[i].called, 1);
        assert_string_equal(q[i].value, "done");
    }
}

typedef struct freer {
    pgpool *pool;
    qres q;
    int refused;
} freer;

static void free_in_callback(void *arg, PGresult *res, const char *err)
{
    freer *f = arg;
    on_result(&f->q, res, err);
    pgpool_free(f->pool);
    pgpool_free(f->pool); /* twice is harmless while the free is pending */
    /* The pool memory is still valid here; it refuses new work. */
    qres dummy = {0};
    if (pgpool_query_sql(f->pool, "SELECT 1", 0, NULL, on_result, &dummy) == CHORUS_ERR)
        f->refused++;
}

typedef struct holder {
    pgconn *conn;
    int called;
} holder;

static bool holder_called(void *arg)
{
    return ((holder *)arg)->called > 0;
}

static void hold_conn(void *arg, pgconn *conn, const char *err)
{
    (void)err;
    holder *h = arg;
    h->called++;
    h->conn = conn;
}

/* pgpool_free from inside a callback: every other callback still runs exactly once,
 * nothing is freed under the caller, and a lease still held becomes inert (its queries
 * are refused; releasing it only frees the handle). */
static void test_free_from_callback(void **state)
{
    struct ev_loop *loop = *state;
    pgpool *p = ready_pool(loop, "t_freecb", 3, 20);
    holder h = {0};
    assert_int_equal(pgpool_acquire(p, hold_conn, &h), CHORUS_OK);
    assert_true(run_until(loop, holder_called, &h, 5000));
    assert_non_null(h.conn);

    freer f = {.pool = p};
    qres q[6] = {{0}};
    assert_int_equal(pgpool_query_sql(p, "SELECT 'first'", 0, NULL, free_in_callback, &f),
                     CHORUS_OK);
    for (int i = 0; i < 6; i++)
        assert_int_equal(
            pgpool_query_sql(p, "SELECT 'x' FROM pg_sleep(0.05)", 0, NULL, on_result, &q[i]),
            CHORUS_OK);
    assert_true(drain_loop(loop, 5000));
    assert_int_equal(f.q.called, 1);
    assert_string_equal(f.q.value, "first");
    assert_int_equal(f.refused, 1);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(q[i].called, 1);
        assert_true(strcmp(q[i].value, "x") == 0 || strcmp(q[i].err, "pool closing") == 0);
    }
    qres late = {0};
    assert_int_equal(pgconn_query_sql(h.conn, "SELECT 1", 0, NULL, on_result, &late),
                     CHORUS_ERR);
    pgpool_release(h.conn);
    assert_int_equal(late.called, 0);
}

/* A lease whose pool was freed from outside any callback: refused, then released. */
static void test_lease_outlives_pool(void **state)
{
    struct ev_loop *loop = *state;
    pgpool *p = ready_pool(loop, "t_lease", 1, 5);
    holder h = {0};
    assert_int_equal(pgpool_acquire(p, hold_conn, &h), CHORUS_OK);
    assert_int_equal(h.called, 0);
    assert_true(run_until(loop, holder_called, &h, 5000));
    assert_non_null(h.conn);
    assert_int_equal(pgpool_busy(p), 1);
    /* Waiting behind the lease: failed by the free. */
    qres q = {0};
    assert_int_equal(pgpool_query_sql(p, "SELECT 1", 0, NULL, on_result, &q), CHORUS_OK);
    pgpool_free(p);
    assert_int_equal(q.called, 1);
    assert_string_equal(q.err, "pool closing");
    assert_true(drain_loop(loop, 5000));
    assert_int_equal(pgconn_query_sql(h.conn, "SELECT 1", 0, NULL, on_result, &q), CHORUS_ERR);
    pgpool_release(h.conn);
}

/* One script on the lease; returns its record after the callback ran. */
static qres run_script(struct ev_loop *loop, pgconn *conn, const char *uses, const char *sql)
{
    qres q = {0};
    assert_int_equal(pgconn_query_script(conn, uses, sql, on_result, &q), CHORUS_OK);
    count_cond c = {&q, 1};
    assert_true(run_until(loop, all_called, &c, 5000));
    return q;
}

/* pgconn_query_script: several statements in one round trip, the last one's result or
 * the first error; a statement it names is prepared on the connection before it runs
 * (one registered after the connection came up is not there yet). */
static void test_script(void **state)
{
    struct ev_loop *loop = *state;
    char table[64], sql[256];
    snprintf(table, sizeof table, "pgpool_script_%d", (int)getpid());
    snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s; CREATE TABLE %s (v int)", table, table);
    admin_exec(sql);
    pgpool *p = ready_pool(loop, "t_script", 1, 5);
    snprintf(sql, sizeof sql, "INSERT INTO %s VALUES ($1) RETURNING v * 2", table);
    assert_int_equal(pgpool_prepare(p, "t_script_put", sql), CHORUS_OK);
    holder h = {0};
    assert_int_equal(pgpool_acquire(p, hold_conn, &h), CHORUS_OK);
    assert_true(run_until(loop, holder_called, &h, 5000));
    assert_non_null(h.conn);
    assert_int_equal(pgconn_query_script(h.conn, "no_such_statement", "SELECT 1", on_result,
                                         &(qres){0}),
                     CHORUS_ERR);

    qres q = run_script(loop, h.conn, "t_script_put", "BEGIN; EXECUTE t_script_put(21)");
    assert_int_equal(q.status, PGRES_TUPLES_OK);
    assert_string_equal(q.value, "42");
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", table);
    assert_int_equal(admin_long(sql), 0); /* inside the BEGIN: not committed yet */
    q = run_script(loop, h.conn, NULL, "SELECT 'a'; COMMIT");
    assert_int_equal(q.status, PGRES_COMMAND_OK);
    assert_int_equal(admin_long(sql), 1);

    /* The first error, not the last statement's result; Postgres runs nothing after
     * it, and the release rolls the failed transaction back. */
    char bad[256];
    snprintf(bad, sizeof bad, "BEGIN; INSERT INTO %s VALUES (1); SELECT 1/0; COMMIT", table);
    q = run_script(loop, h.conn, NULL, bad);
    assert_int_equal(q.status, PGRES_FATAL_ERROR);
    assert_string_equal(q.sqlstate, "22012");
    pgpool_release(h.conn);
    assert_int_equal(pool_count(loop, p, table), 1);
    free_pool(loop, p);
    snprintf(sql, sizeof sql, "DROP TABLE %s", table);
    admin_exec(sql);
}

/* Bad options are refused. */
static void test_bad_options(void **state)
{
    struct ev_loop *loop = *state;
    pgpool_opts o = {.conninfo = test_env("DATABASE_URL"), .name = "t_bad", .size = 0,
                     .queue_max = 1, .connect_timeout_ms = 100, .backoff_min_ms = 1,
                     .backoff_max_ms = 2};
    assert_null(pgpool_new(loop, &o));
    o.size = 1;
    o.conninfo = "postgresql://[broken";
    assert_null(pgpool_new(loop, &o));
    o.conninfo = test_env("DATABASE_URL");
    o.backoff_max_ms = 0;
    assert_null(pgpool_new(loop, &o));
}

int main(void)
{
    if (!getenv("DATABASE_URL") || !*getenv("DATABASE_URL")) {
        fprintf(stderr, "test_pgpool: DATABASE_URL is not set\n");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_simple_query, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prepared, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_concurrent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transaction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sql_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconnect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_silent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_from_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_outlives_pool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_script, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_options, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
