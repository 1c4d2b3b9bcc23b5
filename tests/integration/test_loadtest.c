/* test_loadtest.c - the load-test harness end to end, small, against
 * `chorus run --roles gateway,wss,outbox`: for each run `chorus seed-load` makes 200 users
 * in 4 channels of 50 (sessions expect seq 1 on, so a population serves one run), and
 * `chorus-load` holds 200 sessions through the gateway while 20 messages a second are
 * posted for 3 s. Every run's report must show every session held, every message
 * delivered to each of its 50 members exactly once and in order, and latencies.
 *
 *   - JSON sessions, and the gateway's side of the report (its HTTP routes);
 *   - msgpack sessions, 30 % of them disconnecting on purpose: their resume op goes in
 *     msgpack too;
 *   - JSON sessions, half of them disconnecting on purpose, with the time series plotted
 *     (series.tsv and two PNGs) and Postgres' and Redis' memory sampled.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api.h"

static api_server S;

static int group_setup(void **state)
{
    (void)state;
    api_db_create(&S, "loadtest");
    api_server_start_wss(&S, "load", NULL);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    api_server_stop(&S);
    api_db_drop(&S);
    return 0;
}

/* Runs bin with args and env to its end (at most 120 s); its exit status. */
static int run(test_proc *p, const char *bin, const char *const *args, const char *const *env)
{
    assert_int_equal(test_exec_start(p, bin, args, env), 0);
    int rc = test_proc_wait(p, 120000);
    if (rc != 0)
        test_proc_dump_log(p);
    return rc;
}

static json_t *get(json_t *j, const char *path)
{
    char key[64];
    for (const char *p = path; j && *p;) {
        size_t n = strcspn(p, ".");
        snprintf(key, sizeof key, "%.*s", (int)n, p);
        j = json_object_get(j, key);
        p += n + (p[n] == '.');
    }
    return j;
}

/* The number at path ("a.b.c") in the report. */
static double field(json_t *j, const char *path)
{
    json_t *v = get(j, path);
    if (!json_is_number(v))
        fail_msg("the report has no number at %s", path);
    return json_number_value(v);
}

/* A new population, then chorus-load on it with the small scenario and extra arguments
 * (at most 12), which must exit with status want; its report, and its output in
 * *out when out is not NULL (the caller frees it). */
static json_t *load_run_as(const char *const *extra, int want, char **out)
{
    static char env_db[600];
    snprintf(env_db, sizeof env_db, "CHORUS_DATABASE_URL=%s", S.db_url);
    const char *env[] = {env_db, "CHORUS_JWT_SECRET=" API_JWT_SECRET, "CHORUS_LOG_LEVEL=warn",
                         NULL};
    const char *seed[] = {"seed-load", "200", "4", "50", NULL};
    test_proc pop;
    assert_int_equal(run(&pop, CHORUS_BIN, seed, env), 0);

    char report[300], gw[16];
    snprintf(report, sizeof report, "%s.json", pop.log_path);
    snprintf(gw, sizeof gw, "%d", S.port);
    const char *args[40] = {"--population", pop.log_path, "--gateway", gw, "--connections",
                            "200", "--ramp", "400", "--rate", "20", "--duration", "3",
                            "--workers", "2", "--sources", "4", "--deadline", "60",
                            "--report", report};
    int n = 20;
    for (int i = 0; extra && extra[i] && n < 39; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    test_proc lt;
    assert_int_equal(test_exec_start(&lt, CHORUS_LOAD_BIN, args, env), 0);
    int status = test_proc_wait(&lt, 120000);
    if (status != want) {
        test_proc_dump_log(&lt);
        fail_msg("chorus-load exited with %d, not %d", status, want);
    }
    if (out) {
        FILE *f = fopen(lt.log_path, "r");
        assert_non_null(f);
        *out = calloc(1, 1 << 16);
        size_t got = fread(*out, 1, (1 << 16) - 1, f);
        (*out)[got] = '\0';
        fclose(f);
    }
    json_t *j = json_load_file(report, 0, NULL);
    assert_non_null(j);
    unlink(report);
    unlink(pop.log_path);
    unlink(lt.log_path);
    return j;
}

static json_t *load_run(const char *const *extra)
{
    return load_run_as(extra, 0, NULL);
}

/* What every run must show: all held, each message to each member once, in order. */
static void assert_exact(json_t *j)
{
    assert_int_equal(field(j, "sessions_held"), 200);
    double posted = field(j, "posted");
    assert_true(posted >= 30); /* 20/s for 3 s, give or take the start */
    assert_int_equal(field(j, "posts_asked"), 60);
    assert_int_equal(field(j, "post_errors"), 0);
    assert_int_equal(field(j, "deliveries_due"), posted * 50);
    assert_int_equal(field(j, "deliveries"), posted * 50);
    assert_int_equal(field(j, "lost"), 0);
    assert_int_equal(field(j, "out_of_order"), 0);
    assert_int_equal(field(j, "duplicate"), 0);
    assert_int_equal(field(j, "missing_at_end"), 0);
    assert_true(field(j, "latency_ms.p99") > 0);
    assert_true(field(j, "latency_ms.p50") <= field(j, "latency_ms.p99"));
    assert_true(field(j, "connect_ms.p50") > 0);
    print_message("%s: %.0f sessions, %.0f posts, %.0f deliveries (%.0f replayed), "
                  "%.0f deliberate disconnects, %.0f resumed, latency p99 %.1f ms\n",
                  json_string_value(get(j, "protocol")), field(j, "sessions_held"), posted,
                  field(j, "deliveries"), field(j, "replayed"),
                  field(j, "deliberate_disconnects"), field(j, "resumes_after_disconnect"),
                  field(j, "latency_ms.p99"));
}

/* The gateway's route of that name in the report, or NULL. */
static json_t *route(json_t *j, const char *name)
{
    json_t *r;
    size_t i;
    json_array_foreach(get(j, "gateway.routes"), i, r)
        if (strcmp(json_string_value(json_object_get(r, "route")), name) == 0)
            return r;
    return NULL;
}

/* JSON sessions; the gateway's own figures agree with the harness': one POST a message
 * (counted from before the load began), at least one connect a session, a 5xx for each
 * failed one. */
static void test_json_run(void **state)
{
    (void)state;
    json_t *j = load_run(NULL);
    assert_exact(j);
    assert_string_equal(json_string_value(get(j, "protocol")), "json");
    assert_int_equal(field(j, "deliberate_disconnects"), 0);
    assert_true(field(j, "gateway.rss_bytes.peak") > 0);
    json_t *msgs = route(j, "/api/v1/workspaces/{ws}/channels/{ch}/messages");
    json_t *conn = route(j, "/api/v1/realtime/connect");
    assert_non_null(msgs);
    assert_non_null(conn);
    assert_int_equal(field(msgs, "requests"), field(j, "posted"));
    assert_true(field(conn, "requests") >= 200);
    /* a 503 (no node registered yet, right after the start) is a failed connect the
     * session retries: both sides count the same */
    assert_int_equal(field(conn, "errors_5xx"), field(j, "failed_connect"));
    assert_true(field(msgs, "p99_ms") > 0);
    /* each node's loop, from its chorus_event_loop_lag_seconds over the run */
    json_t *n;
    size_t i;
    assert_true(json_array_size(get(j, "nodes")) >= 1);
    json_array_foreach(get(j, "nodes"), i, n) {
        assert_true(field(n, "loop_lag_mean_ms") >= 0 && field(n, "loop_lag_mean_ms") < 1000);
        assert_true(field(n, "loop_ticks_late_share") >= 0 &&
                    field(n, "loop_ticks_late_share") <= 1);
    }
    json_decref(j);
}

/* msgpack sessions, 30 % of them dropped and resumed (the resume op in msgpack), the
 * sockets read in rounds of 2 ms: nothing is missed between two polls. */
static void test_msgpack_run(void **state)
{
    (void)state;
    const char *extra[] = {"--protocol", "msgpack", "--resume-share", "0.3",
                           "--read-every", "2", NULL};
    json_t *j = load_run(extra);
    assert_exact(j);
    assert_string_equal(json_string_value(get(j, "protocol")), "msgpack");
    assert_int_equal(field(j, "deliberate_disconnects"), 60); /* 30 of each worker's 100 */
    assert_int_equal(field(j, "resumes_after_disconnect"), 60);
    json_decref(j);
}

static void assert_png(const char *dir, const char *name)
{
    char path[300];
    unsigned char head[8] = {0};
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("%s was not written", path);
    size_t got = fread(head, 1, sizeof head, f);
    fclose(f);
    assert_int_equal(got, 8);
    assert_memory_equal(head, "\x89PNG\r\n\x1a\n", 8);
    unlink(path);
}

/* The postmaster.pid of the test's Postgres (its data directory: the test connects as
 * a superuser). */
static void pg_pidfile(char *out, size_t cap)
{
    PGresult *r = api_db_query(S.pg, "SHOW data_directory", NULL);
    snprintf(out, cap, "%s/postmaster.pid", PQgetvalue(r, 0, 0));
    PQclear(r);
}

/* Half the sessions dropped and resumed; the series plotted; the stores sampled. */
static void test_resume_plots_run(void **state)
{
    (void)state;
    char dir[] = "/tmp/chorus-loadtest-plots.XXXXXX", pidfile[600], redis[16];
    assert_non_null(mkdtemp(dir));
    pg_pidfile(pidfile, sizeof pidfile);
    int rport = 0;
    assert_int_equal(sscanf(test_env("REDIS_URL"), "redis://%*[^:]:%d", &rport), 1);
    snprintf(redis, sizeof redis, "%d", rport);
    const char *extra[] = {"--resume-share", "0.5", "--plots", dir, "--pg-pidfile", pidfile,
                           "--redis-port", redis, NULL};
    json_t *j = load_run(extra);
    assert_exact(j);
    assert_int_equal(field(j, "deliberate_disconnects"), 100);
    assert_int_equal(field(j, "resumes_after_disconnect"), 100);
    assert_int_equal(field(j, "closed_by_nodes"), 0);
    assert_true(json_array_size(get(j, "series")) >= 8); /* a row a second, ~9 s */
    assert_true(field(j, "postgres.processes") >= 2);
    assert_true(field(j, "postgres.rss_bytes.peak") > 0);
    assert_true(field(j, "redis.used_memory_bytes.peak") > 0);
    /* the machine's CPU over the seconds with deliveries: a run that posts for 3 s */
    assert_true(field(j, "host.cpus") >= 1);
    assert_true(field(j, "host.seconds") >= 2);
    assert_true(json_is_true(get(j, "host.with_deliveries")));
    assert_true(field(j, "host.busy_pct_max") > 0 && field(j, "host.busy_pct_max") <= 100);
    assert_true(field(j, "host.busy_pct_median") <= field(j, "host.busy_pct_max"));
    /* the kernel's costs, timed before the load: a round trip is several calls */
    assert_true(field(j, "host.syscall_ns") > 0);
    assert_true(field(j, "host.wakeup_us") * 1000 > 2 * field(j, "host.syscall_ns"));
    print_message("postgres %.0f processes, RSS %.1f MiB; redis used_memory %.1f MiB\n",
                  field(j, "postgres.processes"), field(j, "postgres.rss_bytes.peak") / 1048576,
                  field(j, "redis.used_memory_bytes.peak") / 1048576);
    json_decref(j);
    assert_png(dir, "connections.png");
    assert_png(dir, "latency.png");
    assert_png(dir, "host.png");
    char path[300];
    snprintf(path, sizeof path, "%s/series.tsv", dir);
    assert_int_equal(access(path, R_OK), 0);
    unlink(path);
    snprintf(path, sizeof path, "%s/plots.gp", dir);
    unlink(path);
    assert_int_equal(rmdir(dir), 0);
}

/* A run that never holds every session it asked for fails, and says so: 200 asked at
 * 20 a second, stopped by a 4 s deadline. */
static void test_short_run_fails(void **state)
{
    (void)state;
    const char *extra[] = {"--ramp", "20", "--deadline", "4", NULL}; /* later flags win */
    char *out;
    json_t *j = load_run_as(extra, 1, &out);
    print_message("%s", strstr(out, "chorus-load: at most") ? strstr(out, "chorus-load: at most")
                                                            : out);
    assert_non_null(strstr(out, "of the 200 sessions asked were held at once"));
    assert_true(field(j, "sessions_peak") < 200);
    free(out);
    json_decref(j);
}

/* A publisher posts one message at a time, so a rate it cannot keep is not offered:
 * the report says how much was, rather than pass off a lighter run as the one asked
 * for. 50,000 a second from one publisher for 1 s: no POST takes 20 us. */
static void test_publishers_behind_are_reported(void **state)
{
    (void)state;
    const char *extra[] = {"--rate", "50000", "--duration", "1", NULL};
    char *out;
    json_t *j = load_run_as(extra, 0, &out);
    const char *line = strstr(out, "the publishers fell behind");
    print_message("%s", line ? line : out);
    assert_non_null(line);
    assert_int_equal(field(j, "posts_asked"), 50000);
    double posted = field(j, "posted");
    assert_true(posted > 0 && posted < 0.95 * 50000);
    assert_int_equal(field(j, "deliveries"), posted * 50); /* what was posted still arrives */
    free(out);
    json_decref(j);
}

/* A failed connect says why: no answer from the gateway (nothing listens on its port),
 * or a 503 because no WSS node had room (a gateway whose Redis db holds no node). Each
 * run holds nothing, so it fails at its 3 s deadline. */
static void check_causes(const char *gateway_port, const char *cause, const char *line)
{
    const char *extra[] = {"--gateway", gateway_port, "--connections", "20", "--deadline",
                           "3", NULL};
    char *out;
    json_t *j = load_run_as(extra, 1, &out);
    const char *said = strstr(out, "failed connects:");
    print_message("%.*s\n", said ? (int)strcspn(said, "\n") : 0, said ? said : "");
    double failed = field(j, "failed_connect");
    assert_true(failed > 0);
    static const char *const causes[] = {"503", "other_status", "no_answer", "node_unreachable"};
    for (size_t i = 0; i < sizeof causes / sizeof causes[0]; i++) {
        double n = field(j, api_p("failed_connect_by_cause.%s", causes[i]));
        assert_true(strcmp(causes[i], cause) == 0 ? n == failed : n == 0);
    }
    assert_non_null(said);
    assert_non_null(strstr(said, line));
    free(out);
    json_decref(j);
}

static void test_failed_connects_by_cause(void **state)
{
    (void)state;
    check_causes(api_p("%d", test_free_port()), "no_answer", "no answer from the gateway");
    api_server g = S;
    g.pg = NULL;
    api_redis_db(&g);
    api_server_start_roles(&g, "gateway", NULL);
    check_causes(api_p("%d", g.port), "503", "answered 503 (no node had room)");
    api_server_stop(&g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_run),
        cmocka_unit_test(test_msgpack_run),
        cmocka_unit_test(test_resume_plots_run),
        cmocka_unit_test(test_short_run_fails),
        cmocka_unit_test(test_publishers_behind_are_reported),
        cmocka_unit_test(test_failed_connects_by_cause),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
