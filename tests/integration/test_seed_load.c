/* test_seed_load.c - `chorus seed-load USERS CHANNELS MEMBERS`, the load-test harness's
 * bulk bootstrap: the population it writes (users, one workspace, channels, members
 * round the user list) and what it prints (ids and tokens that verify). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api.h"
#include "chorus/jwt.h"

static api_server S;

static int group_setup(void **state)
{
    (void)state;
    api_db_create(&S, "seedload");
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    api_db_drop(&S);
    return 0;
}

/* Runs seed-load with the operands (workspaces may be NULL); returns its output (the log
 * file), exit 0. */
static char *seed_load_ws(const char *users, const char *channels, const char *members,
                          const char *workspaces)
{
    static char env_db[600];
    snprintf(env_db, sizeof env_db, "CHORUS_DATABASE_URL=%s", S.db_url);
    const char *env[] = {env_db, "CHORUS_JWT_SECRET=" API_JWT_SECRET, "CHORUS_LOG_LEVEL=warn",
                         NULL};
    const char *args[] = {"seed-load", users, channels, members, workspaces, NULL};
    test_proc p;
    assert_int_equal(test_proc_start(&p, args, env), 0);
    int rc = test_proc_wait(&p, 60000);
    if (rc != 0) {
        test_proc_dump_log(&p);
        fail_msg("seed-load exited with %d", rc);
    }
    FILE *f = fopen(p.log_path, "r");
    assert_non_null(f);
    char *out = calloc(1, 1 << 20);
    size_t n = fread(out, 1, (1 << 20) - 1, f);
    out[n] = '\0';
    fclose(f);
    unlink(p.log_path);
    return out;
}

static char *seed_load(const char *users, const char *channels, const char *members)
{
    return seed_load_ws(users, channels, members, NULL);
}

/* 50 users, 5 channels of 20: each user in two channels; every line of the output
 * names a real row, and every token is a valid one for its user. */
static void test_population(void **state)
{
    (void)state;
    char *out = seed_load("50", "5", "20");
    int users = 0, channels = 0;
    long long ws = 0;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        long long id, first;
        int index, members;
        char token[600];
        if (sscanf(line, "workspace\t%lld", &id) == 1) {
            ws = id;
        } else if (sscanf(line, "channel\t%lld\t%lld\t%d", &id, &first, &members) == 3) {
            assert_int_equal(first, (long long)channels * 20 % 50);
            assert_int_equal(members, 20);
            assert_int_equal(api_db_int(S.pg, api_p("SELECT count(*) FROM channel_members"
                                                    " WHERE channel_id = %lld", id), NULL), 20);
            channels++;
        } else if (sscanf(line, "user\t%d\t%lld\t%599s", &index, &id, token) == 3) {
            int64_t sub = 0;
            char err[128];
            assert_int_equal(index, users);
            assert_int_equal(jwt_verify(API_JWT_SECRET, strlen(API_JWT_SECRET), token,
                                        (int64_t)time(NULL), &sub, err, sizeof err), 0);
            assert_int_equal(sub, id);
            users++;
        }
    }
    assert_true(ws > 0);
    assert_int_equal(channels, 5);
    assert_int_equal(users, 50);
    const char *q = api_p("SELECT count(*) FROM (SELECT user_id FROM channel_members m"
                          " JOIN channels c ON c.id = m.channel_id WHERE c.workspace_id = %lld"
                          " GROUP BY user_id HAVING count(*) = 2) x", ws);
    assert_int_equal(api_db_int(S.pg, q, NULL), 50);
    assert_int_equal(api_db_int(S.pg, api_p("SELECT count(*) FROM workspace_members"
                                            " WHERE workspace_id = %lld", ws), NULL), 50);
    /* vacuumed and analyzed by seed-load itself (by hand, not by autovacuum), so that
     * autovacuum has nothing left to do to them once a load test runs */
    assert_int_equal(api_db_int(S.pg, "SELECT count(*) FROM pg_stat_user_tables"
                                      " WHERE relname IN ('users', 'workspaces',"
                                      "  'workspace_members', 'channels', 'channel_members')"
                                      " AND last_vacuum IS NOT NULL AND last_analyze IS NOT NULL",
                                NULL), 5);
    free(out);
    /* a second run makes a second population beside the first */
    out = seed_load("10", "1", "10");
    assert_int_equal(api_db_int(S.pg, "SELECT count(*) FROM workspaces", NULL), 2);
    assert_int_equal(api_db_int(S.pg, "SELECT count(*) FROM users", NULL), 60);
    free(out);
}

/* WORKSPACES 3: 30 users, 6 channels of 10. Channel k is in workspace k % 3 and says so
 * in its line; users 0-9 (channels 0 and 3) are in workspace 0 only, and so on; the
 * first user owns all three. */
static void test_workspaces(void **state)
{
    (void)state;
    char *out = seed_load_ws("30", "6", "10", "3");
    long long ws[3];
    int nws = 0, k = 0;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        long long id, first, in;
        int members;
        if (sscanf(line, "workspace\t%lld", &id) == 1) {
            assert_true(nws < 3);
            ws[nws++] = id;
        } else if (sscanf(line, "channel\t%lld\t%lld\t%d\t%lld", &id, &first, &members,
                          &in) == 4) {
            assert_int_equal(nws, 3);
            assert_int_equal(in, ws[k % 3]);
            assert_int_equal(api_db_int(S.pg, api_p("SELECT workspace_id FROM channels"
                                                    " WHERE id = %lld", id), NULL), in);
            k++;
        }
    }
    assert_int_equal(k, 6);
    const char *in3 = api_p("(%lld,%lld,%lld)", ws[0], ws[1], ws[2]);
    assert_int_equal(api_db_int(S.pg, api_p("SELECT count(*) FROM workspace_members"
                                            " WHERE workspace_id IN %s", in3), NULL), 32);
    assert_int_equal(api_db_int(S.pg, api_p("SELECT count(*) FROM workspace_members"
                                            " WHERE workspace_id IN %s AND role = 'owner'", in3),
                                NULL), 3);
    /* every member of a channel is a member of its workspace (the foreign key says so);
     * and nobody else is in it, but the owner */
    assert_int_equal(api_db_int(S.pg, api_p("SELECT count(*) FROM workspace_members w"
                                            " WHERE w.workspace_id IN %s AND w.role = 'member'"
                                            " AND NOT EXISTS (SELECT 1 FROM channel_members m"
                                            "  WHERE m.workspace_id = w.workspace_id"
                                            "    AND m.user_id = w.user_id)", in3), NULL), 0);
    free(out);
}

/* Operands out of range: usage, exit 2, nothing written. */
static void test_bad_operands(void **state)
{
    (void)state;
    long long before = api_db_int(S.pg, "SELECT count(*) FROM users", NULL);
    static char env_db[600];
    snprintf(env_db, sizeof env_db, "CHORUS_DATABASE_URL=%s", S.db_url);
    const char *env[] = {env_db, "CHORUS_JWT_SECRET=" API_JWT_SECRET, NULL};
    const char *bad[][5] = {{"seed-load", "10", "2", "11", NULL},
                            {"seed-load", "0", "1", "1", NULL},
                            {"seed-load", "10", NULL, NULL, NULL},
                            {"seed-load", "10", "2", "5", "0"},
                            {"seed-load", "10", "2", "5", "3"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *args[] = {bad[i][0], bad[i][1], bad[i][2], bad[i][3], bad[i][4], NULL};
        test_proc p;
        assert_int_equal(test_proc_start(&p, args, env), 0);
        assert_int_equal(test_proc_wait(&p, 20000), 2);
        unlink(p.log_path);
    }
    assert_int_equal(api_db_int(S.pg, "SELECT count(*) FROM users", NULL), before);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_population),
        cmocka_unit_test(test_workspaces),
        cmocka_unit_test(test_bad_operands),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
