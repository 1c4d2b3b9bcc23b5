/* test_loadtest.c - the load-test harness end to end, small: `chorus seed-load` makes
 * 200 users in 4 channels of 50, `chorus-load` holds 200 sessions through the gateway of
 * `chorus run --roles gateway,wss,outbox` and posts 20 messages a second for 3 s; its
 * report must show every session held, every message delivered to each of its 50
 * members, nothing lost or out of order, and latencies. */
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

static double field(json_t *j, const char *a, const char *b)
{
    json_t *v = json_object_get(j, a);
    if (b)
        v = json_object_get(v, b);
    if (!json_is_number(v))
        fail_msg("the report has no %s%s%s", a, b ? "." : "", b ? b : "");
    return json_number_value(v);
}

static void test_small_run(void **state)
{
    (void)state;
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
    const char *load[] = {"--population", pop.log_path, "--gateway", gw, "--connections", "200",
                          "--ramp", "400", "--rate", "20", "--duration", "3", "--workers", "2",
                          "--sources", "4", "--deadline", "60", "--report", report, NULL};
    test_proc lt;
    assert_int_equal(run(&lt, CHORUS_LOAD_BIN, load, env), 0);
    json_t *j = json_load_file(report, 0, NULL);
    assert_non_null(j);
    assert_int_equal(field(j, "sessions_held", NULL), 200);
    double posted = field(j, "posted", NULL);
    assert_true(posted >= 30); /* 20/s for 3 s, give or take the start */
    assert_int_equal(field(j, "post_errors", NULL), 0);
    assert_int_equal(field(j, "deliveries", NULL), posted * 50);
    assert_int_equal(field(j, "lost", NULL), 0);
    assert_int_equal(field(j, "out_of_order", NULL), 0);
    assert_int_equal(field(j, "duplicate", NULL), 0);
    assert_true(field(j, "latency_ms", "p99") > 0);
    assert_true(field(j, "latency_ms", "p50") <= field(j, "latency_ms", "p99"));
    assert_true(field(j, "connect_ms", "p50") > 0);
    print_message("%.0f sessions, %.0f posts, %.0f deliveries, latency p99 %.1f ms\n",
                  field(j, "sessions_held", NULL), posted, field(j, "deliveries", NULL),
                  field(j, "latency_ms", "p99"));
    json_decref(j);
    unlink(report);
    unlink(pop.log_path);
    unlink(lt.log_path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_run),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
