/* test_api_structure.c - the workspace filter is structural (sql/003_api.sql): every
 * api_* function that takes a workspace id resolves it against the caller's
 * memberships before it does anything else. A new function that forgets it fails here,
 * before any isolation test has to catch a leak. */
#include <libpq-fe.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chorus/migrate.h"
#include "testutil.h"

static char db[256];

static int setup(void **state)
{
    (void)state;
    PGconn *c = PQconnectdb(test_env("DATABASE_URL"));
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    char sql[200];
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS chorus_struct_%d", (int)getpid());
    PQclear(PQexec(c, sql));
    snprintf(sql, sizeof sql, "CREATE DATABASE chorus_struct_%d", (int)getpid());
    PGresult *r = PQexec(c, sql);
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    snprintf(db, sizeof db, "host=%s port=%s user=%s dbname=chorus_struct_%d", PQhost(c),
             PQport(c), PQuser(c), (int)getpid());
    PQfinish(c);
    char err[512];
    if (migrate_run(db, err, sizeof err) < 0)
        fail_msg("migrate: %s", err);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    PGconn *c = PQconnectdb(test_env("DATABASE_URL"));
    char sql[200];
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS chorus_struct_%d WITH (FORCE)",
             (int)getpid());
    PQclear(PQexec(c, sql));
    PQfinish(c);
    return 0;
}

/* The first statement that runs in a function with p_ws is one of the access checks:
 * in PL/pgSQL, DECLARE initialisers run first, so the check must be the first one. */
static void test_every_ws_function_checks_access(void **state)
{
    (void)state;
    PGconn *c = PQconnectdb(db);
    PGresult *r = PQexec(c,
        "SELECT p.proname, p.prosrc FROM pg_proc p"
        " WHERE p.proname LIKE 'api\\_%' AND 'p_ws' = ANY (p.proargnames)"
        "   AND p.proname NOT IN ('api_ws_role', 'api_channel_access', 'api_channel_member',"
        "                         'api_emit_channel', 'api_emit_user', 'api_channel_join_one',"
        "                         'api_ws_members')"
        " ORDER BY 1");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    int n = PQntuples(r);
    assert_true(n >= 20); /* every route under /workspaces/{ws} */
    int bad = 0;
    for (int i = 0; i < n; i++) {
        const char *name = PQgetvalue(r, i, 0), *src = PQgetvalue(r, i, 1);
        const char *first = strstr(src, ":= api_");
        bool ok = first && (strncmp(first, ":= api_ws_role(p_user, p_ws)", 28) == 0 ||
                            strncmp(first, ":= api_channel_access(p_user, p_ws, p_ch)", 41) == 0 ||
                            strncmp(first, ":= api_channel_member(p_user, p_ws, p_ch)", 41) == 0);
        if (!ok) {
            fprintf(stderr, "%s: its first statement is not an access check on p_ws\n", name);
            bad++;
        }
    }
    PQclear(r);
    PQfinish(c);
    assert_int_equal(bad, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_ws_function_checks_access),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
