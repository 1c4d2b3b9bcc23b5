/* test_process.c - a whole chorus process with every role: the admin routes, HTTP error
 * handling, readiness against real Postgres and Redis, and a clean SIGTERM shutdown
 * (which, in the sanitizer build, also proves the shutdown path leaks nothing). */
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "api.h"
#include "testutil.h"

#define SECRET "CHORUS_JWT_SECRET=test-secret-test-secret-test-secret-0123"

typedef struct fixture {
    test_proc proc;
    int gw, wss;
} fixture;

static char env_db[600], env_redis[512], env_gw[64], env_wss[64];
/* Its own migrated database: the outbox role is ready only once it holds a lease, which
 * needs the schema. */
static api_server db;

static int group_setup(void **state)
{
    (void)state;
    api_db_create(&db, "proc");
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    api_db_drop(&db);
    return 0;
}

static int start_chorus(fixture *f, const char *redis_url)
{
    f->gw = test_free_port();
    f->wss = test_free_port();
    snprintf(env_db, sizeof env_db, "CHORUS_DATABASE_URL=%s", db.db_url);
    snprintf(env_redis, sizeof env_redis, "CHORUS_REDIS_URL=%s", redis_url);
    snprintf(env_gw, sizeof env_gw, "CHORUS_GATEWAY_PORT=%d", f->gw);
    snprintf(env_wss, sizeof env_wss, "CHORUS_WSS_PORT=%d", f->wss);
    const char *env[] = {env_db, env_redis, env_gw, env_wss, SECRET, NULL};
    const char *args[] = {"run", "--roles", "gateway,wss,outbox,indexer", NULL};
    assert_int_equal(test_proc_start(&f->proc, args, env), 0);
    if (test_wait_http(f->gw, "/healthz", 200, 15000) != 0) {
        test_proc_dump_log(&f->proc);
        fail_msg("chorus did not answer /healthz");
    }
    return 0;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    start_chorus(f, test_env("REDIS_URL"));
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    if (f->proc.pid) {
        int rc = test_proc_stop(&f->proc, SIGTERM, 15000);
        if (rc != 0)
            test_proc_dump_log(&f->proc);
        assert_int_equal(rc, 0);
    }
    unlink(f->proc.log_path);
    free(f);
    return 0;
}

/* /healthz answers 200 with JSON on both listeners of the process. */
static void test_healthz_on_every_listener(void **state)
{
    fixture *f = *state;
    int ports[] = {f->gw, f->wss};
    for (int i = 0; i < 2; i++) {
        test_http_resp r;
        assert_int_equal(test_http(ports[i], "GET", "/healthz", NULL, NULL, 0, &r), 0);
        assert_int_equal(r.status, 200);
        assert_non_null(strstr(r.body, "\"status\":\"ok\""));
        test_http_free(&r);
    }
}

/* /readyz is 200 once Postgres and Redis are connected, and names both checks. */
static void test_readyz_with_real_servers(void **state)
{
    fixture *f = *state;
    if (test_wait_http(f->gw, "/readyz", 200, 10000) != 0) {
        test_proc_dump_log(&f->proc);
        fail_msg("/readyz never became 200");
    }
    test_http_resp r;
    assert_int_equal(test_http(f->gw, "GET", "/readyz", NULL, NULL, 0, &r), 0);
    assert_non_null(strstr(r.body, "\"postgres\":true"));
    assert_non_null(strstr(r.body, "\"redis\":true"));
    test_http_free(&r);
}

/* /metrics is Prometheus text that promtool accepts, with request and pool figures. */
static void test_metrics_pass_promtool(void **state)
{
    fixture *f = *state;
    test_wait_http(f->gw, "/readyz", 200, 10000);
    test_http_resp r;
    assert_int_equal(test_http(f->gw, "GET", "/metrics", NULL, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    char ctype[128];
    assert_int_equal(test_http_header(&r, "content-type", ctype, sizeof ctype), 0);
    assert_non_null(strstr(ctype, "text/plain"));
    assert_non_null(strstr(r.body, "chorus_http_requests_total{route=\"/readyz\",status=\"200\"}"));
    assert_non_null(strstr(r.body, "chorus_pg_pool_size"));
    assert_non_null(strstr(r.body, "chorus_redis_connected"));
    assert_non_null(strstr(r.body, "process_resident_memory_bytes"));
    /* process_open_fds is the process' files (the size of /proc/self/fd on Linux 6.2 and
     * later, a read of it before): what the test finds there, give or take the scrape's
     * own connection. */
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/fd", (int)f->proc.pid);
    double fds = test_metric(f->gw, "process_open_fds");
    int seen = 0;
    DIR *d = opendir(dir);
    assert_non_null(d);
    for (struct dirent *e = readdir(d); e; e = readdir(d))
        seen += e->d_name[0] != '.';
    closedir(d);
    print_message("process_open_fds %.0f, %d files in %s\n", fds, seen, dir);
    assert_true(fds > 10 && fds >= seen - 3 && fds <= seen + 3);
    FILE *p = popen("promtool check metrics > /tmp/promtool-out.txt 2>&1", "w");
    assert_non_null(p);
    fwrite(r.body, 1, r.body_len, p);
    int rc = pclose(p);
    if (rc != 0)
        system("cat /tmp/promtool-out.txt >&2");
    assert_int_equal(rc, 0);
    test_http_free(&r);
}

/* chorus_event_loop_lag_seconds: a process stopped for 400 ms (SIGSTOP: as one that
 * waits for a core) shows a timer run that late, and the quiet ticks before it did not.
 * The scrape waits for it (up to 2 s): a scrape 200 ms after the SIGCONT did not always
 * find it yet, although the tick it found later had run ~310 ms late, i.e. at once. */
static double late_ticks(int port)
{
    return test_metric(port, "chorus_event_loop_lag_seconds_count") -
           test_metric(port, "chorus_event_loop_lag_seconds_bucket{le=\"0.25\"}");
}

static void test_loop_lag_shows_a_stall(void **state)
{
    fixture *f = *state;
    usleep(300 * 1000);
    double ticks = test_metric(f->gw, "chorus_event_loop_lag_seconds_count");
    double before = late_ticks(f->gw);
    assert_true(ticks >= 2); /* a tick every 100 ms */
    kill(f->proc.pid, SIGSTOP);
    usleep(400 * 1000);
    kill(f->proc.pid, SIGCONT);
    double after = before;
    for (int64_t end = test_now_ms() + 2000; after < before + 1 && test_now_ms() < end;
         usleep(50 * 1000))
        after = late_ticks(f->gw);
    print_message("%.0f ticks before the stop, %.0f of them over 250 ms; %.0f after it\n",
                  ticks, before, after);
    assert_true(after >= before + 1);
    assert_true(test_metric(f->gw, "chorus_event_loop_lag_seconds_sum") >= 0.3);
}

/* Unknown routes are 404 and wrong methods 405, both with the JSON error body. */
static void test_404_and_405_are_json(void **state)
{
    fixture *f = *state;
    test_http_resp r;
    assert_int_equal(test_http(f->gw, "GET", "/no/such/route", NULL, NULL, 0, &r), 0);
    assert_int_equal(r.status, 404);
    assert_non_null(strstr(r.body, "{\"error\":{\"code\":\"not_found\""));
    test_http_free(&r);
    assert_int_equal(test_http(f->gw, "POST", "/healthz", NULL, "{}", 2, &r), 0);
    assert_int_equal(r.status, 405);
    assert_non_null(strstr(r.body, "\"code\":\"method_not_allowed\""));
    test_http_free(&r);
}

/* A body over the limit is refused with 413 and the process stays up. */
static void test_body_over_limit_is_413(void **state)
{
    fixture *f = *state;
    size_t n = 2 * 1024 * 1024;
    char *big = malloc(n);
    memset(big, 'x', n);
    test_http_resp r;
    int rc = test_http(f->gw, "POST", "/healthz", NULL, big, n, &r);
    free(big);
    /* The server may close before reading the whole body; either way, no crash: */
    if (rc == 0) {
        assert_int_equal(r.status, 413);
        assert_non_null(strstr(r.body, "\"code\":\"body_too_large\""));
        test_http_free(&r);
    }
    assert_int_equal(test_wait_http(f->gw, "/healthz", 200, 2000), 0);
}

/* A sane client X-Request-Id is echoed; otherwise a fresh one is made. */
static void test_request_id(void **state)
{
    fixture *f = *state;
    test_http_resp r;
    char rid[64];
    assert_int_equal(test_http(f->gw, "GET", "/healthz", "X-Request-Id: abc-123\r\n", NULL, 0, &r), 0);
    assert_int_equal(test_http_header(&r, "x-request-id", rid, sizeof rid), 0);
    assert_string_equal(rid, "abc-123");
    test_http_free(&r);
    assert_int_equal(test_http(f->gw, "GET", "/healthz", "X-Request-Id: bad id!\r\n", NULL, 0, &r), 0);
    assert_int_equal(test_http_header(&r, "x-request-id", rid, sizeof rid), 0);
    assert_int_equal(strlen(rid), 16);
    test_http_free(&r);
}

/* With Redis unreachable the process is alive but not ready, and says which check fails. */
static void test_readyz_503_without_redis(void **state)
{
    (void)state;
    fixture f = {0};
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", test_free_port());
    start_chorus(&f, url);
    test_http_resp r;
    usleep(500 * 1000);
    assert_int_equal(test_http(f.gw, "GET", "/readyz", NULL, NULL, 0, &r), 0);
    assert_int_equal(r.status, 503);
    assert_non_null(strstr(r.body, "\"redis\":false"));
    test_http_free(&r);
    assert_int_equal(test_proc_stop(&f.proc, SIGTERM, 15000), 0);
    unlink(f.proc.log_path);
}

/* A connect flood near the open-files limit: connections on the last files are closed on
 * accept (and counted), so the process keeps the files it needs, and it still answers
 * and reaches Postgres and Redis once the flood is gone. 256 files, a pool of 8: the
 * ceiling is 256 - (8 + 64) = 184. */
static void test_connect_flood_spares_files(void **state)
{
    (void)state;
    fixture f = {0};
    f.gw = test_free_port();
    snprintf(env_db, sizeof env_db, "CHORUS_DATABASE_URL=%s", db.db_url);
    snprintf(env_redis, sizeof env_redis, "CHORUS_REDIS_URL=%s", test_env("REDIS_URL"));
    snprintf(env_gw, sizeof env_gw, "CHORUS_GATEWAY_PORT=%d", f.gw);
    const char *env[] = {env_db, env_redis, env_gw, SECRET, "TEST_NOFILE=256", NULL};
    const char *args[] = {"run", "--roles", "gateway", NULL};
    assert_int_equal(test_proc_start(&f.proc, args, env), 0);
    assert_int_equal(test_wait_http(f.gw, "/readyz", 200, 15000), 0);
    enum { N = 300 };
    int fds[N], refused = 0;
    for (int i = 0; i < N; i++)
        assert_true((fds[i] = test_connect(f.gw)) >= 0);
    usleep(500 * 1000);
    for (int i = 0; i < N; i++) {
        char c;
        refused += recv(fds[i], &c, 1, MSG_DONTWAIT) == 0; /* closed by the server */
    }
    print_message("%d of %d connections closed on accept\n", refused, N);
    assert_true(refused >= N - 184 && refused < N);
    for (int i = 0; i < N; i++)
        close(fds[i]);
    usleep(200 * 1000);
    assert_int_equal(test_wait_http(f.gw, "/readyz", 200, 5000), 0);
    assert_true(test_metric(f.gw, "chorus_http_connections_refused_total") >= refused);
    assert_int_equal(test_proc_stop(&f.proc, SIGTERM, 15000), 0);
    unlink(f.proc.log_path);
}

/* A second process cannot take a port that is in use: it exits non-zero, not hangs. */
static void test_port_in_use_fails_fast(void **state)
{
    fixture *f = *state;
    test_proc p;
    char gw[64];
    snprintf(gw, sizeof gw, "CHORUS_GATEWAY_PORT=%d", f->gw);
    const char *env[] = {env_db, env_redis, gw, SECRET, NULL};
    const char *args[] = {"run", "--roles", "gateway", NULL};
    assert_int_equal(test_proc_start(&p, args, env), 0);
    int rc = test_proc_wait(&p, 10000);
    if (rc == -2)
        test_proc_stop(&p, SIGKILL, 1000);
    assert_true(rc > 0 && rc < 128); /* exited by itself, with an error status */
    unlink(p.log_path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_healthz_on_every_listener, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readyz_with_real_servers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics_pass_promtool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loop_lag_shows_a_stall, setup, teardown),
        cmocka_unit_test_setup_teardown(test_404_and_405_are_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_over_limit_is_413, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_id, setup, teardown),
        cmocka_unit_test(test_readyz_503_without_redis),
        cmocka_unit_test(test_connect_flood_spares_files),
        cmocka_unit_test_setup_teardown(test_port_in_use_fails_fast, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
