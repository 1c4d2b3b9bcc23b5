/* test_migrate.c - `chorus migrate` on fresh databases: applies everything once, is a
 * no-op the second time, is safe when several processes start at once, and the schema
 * it builds refuses bad states. */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "chorus/migrate.h"
#include "testutil.h"

/* Creates an empty database on the test server; its conninfo goes to out. */
static void fresh_db(const char *tag, char *out, size_t outlen)
{
    const char *url = test_env("DATABASE_URL");
    PGconn *c = PQconnectdb(url);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    char name[64], sql[160];
    snprintf(name, sizeof name, "chorus_mig_%s_%d", tag, (int)getpid());
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s", name);
    PQclear(PQexec(c, sql));
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
    PGresult *r = PQexec(c, sql);
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    snprintf(out, outlen, "host=%s port=%s user=%s dbname=%s", PQhost(c), PQport(c),
             PQuser(c), name);
    PQfinish(c);
}

static void drop_db(const char *conninfo)
{
    const char *name = strstr(conninfo, "dbname=") + 7;
    PGconn *c = PQconnectdb(test_env("DATABASE_URL"));
    char sql[160];
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", name);
    PQclear(PQexec(c, sql));
    PQfinish(c);
}

/* Every migration is applied once; running again applies nothing. */
static void test_apply_then_noop(void **state)
{
    (void)state;
    char db[256], err[1024];
    fresh_db("once", db, sizeof db);
    assert_true(chorus_migrations_count > 0);
    int n = migrate_run(db, err, sizeof err);
    if (n < 0)
        fail_msg("%s", err);
    assert_int_equal(n, chorus_migrations_count);
    assert_int_equal(migrate_current(db, err, sizeof err),
                     chorus_migrations[chorus_migrations_count - 1].version);
    assert_int_equal(migrate_run(db, err, sizeof err), 0);
    drop_db(db);
}

/* Four processes migrating one empty database at once: each migration applied by
 * exactly one of them, none fails. */
static void test_concurrent_runs(void **state)
{
    (void)state;
    char db[256];
    fresh_db("conc", db, sizeof db);
    pid_t kids[4];
    for (int i = 0; i < 4; i++) {
        kids[i] = fork();
        if (kids[i] == 0) {
            char err[1024];
            int n = migrate_run(db, err, sizeof err);
            _exit(n < 0 ? 255 : n);
        }
    }
    int total = 0;
    for (int i = 0; i < 4; i++) {
        int st;
        waitpid(kids[i], &st, 0);
        assert_true(WIFEXITED(st));
        assert_int_not_equal(WEXITSTATUS(st), 255);
        total += WEXITSTATUS(st);
    }
    assert_int_equal(total, chorus_migrations_count);
    PGconn *c = PQconnectdb(db);
    PGresult *r = PQexec(c, "SELECT count(*) FROM schema_migrations");
    assert_int_equal(atoi(PQgetvalue(r, 0, 0)), chorus_migrations_count);
    PQclear(r);
    PQfinish(c);
    drop_db(db);
}

/* Runs sql and returns the SQLSTATE of its error ("" when it succeeded). */
static const char *try_sql(PGconn *c, const char *sql)
{
    static char state[8];
    PGresult *r = PQexec(c, sql);
    const char *s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    snprintf(state, sizeof state, "%s", s ? s : "");
    PQclear(r);
    return state;
}

/* The schema makes bad states impossible: duplicate emails (any case), bad slugs,
 * duplicate seqs, a channel member outside the workspace, over-long text. */
static void test_constraints(void **state)
{
    (void)state;
    char db[256], err[1024];
    fresh_db("cons", db, sizeof db);
    assert_true(migrate_run(db, err, sizeof err) >= 0);
    PGconn *c = PQconnectdb(db);
    assert_string_equal(try_sql(c, "INSERT INTO users (email, name, password_hash) VALUES"
                                   " ('a@x.io', 'A', 'h'), ('b@x.io', 'B', 'h')"), "");
    assert_string_equal(try_sql(c, "INSERT INTO users (email, name, password_hash) VALUES"
                                   " ('A@X.io', 'A2', 'h')"), "23505");
    assert_string_equal(try_sql(c, "INSERT INTO users (email, name, password_hash) VALUES"
                                   " ('no-at-sign', 'C', 'h')"), "23514");
    assert_string_equal(try_sql(c, "INSERT INTO workspaces (name, slug) VALUES ('W', 'Bad Slug')"), "23514");
    assert_string_equal(try_sql(c, "INSERT INTO workspaces (name, slug) VALUES ('W', 'w1')"), "");
    assert_string_equal(try_sql(c, "INSERT INTO workspaces (name, slug) VALUES ('W2', 'w1')"), "23505");
    assert_string_equal(try_sql(c, "INSERT INTO workspaces (name, slug) VALUES ('W2', 'w2')"), "");
    /* Ids come from lookups, not literals: a failed insert still consumes an identity
     * value, so the rows above need not have ids 1 and 2. */
#define W1 "(SELECT id FROM workspaces WHERE slug = 'w1')"
#define W2 "(SELECT id FROM workspaces WHERE slug = 'w2')"
#define UA "(SELECT id FROM users WHERE email = 'a@x.io')"
#define UB "(SELECT id FROM users WHERE email = 'b@x.io')"
#define CH "(SELECT id FROM channels WHERE name = 'general')"
    assert_string_equal(try_sql(c, "INSERT INTO workspace_members (workspace_id, user_id, role)"
                                   " VALUES (" W1 ", " UA ", 'owner')"), "");
    assert_string_equal(try_sql(c, "INSERT INTO workspace_members (workspace_id, user_id, role)"
                                   " VALUES (" W1 ", " UB ", 'king')"), "23514");
    assert_string_equal(try_sql(c, "INSERT INTO channels (workspace_id, name) VALUES (" W1 ", 'general')"), "");
    assert_string_equal(try_sql(c, "INSERT INTO channels (workspace_id, name) VALUES (" W1 ", 'GENERAL')"), "23505");
    /* user b is not a member of workspace w1: cannot join its channel */
    assert_string_equal(try_sql(c, "INSERT INTO channel_members (channel_id, user_id, workspace_id)"
                                   " VALUES (" CH ", " UB ", " W1 ")"), "23503");
    /* the denormalised workspace id must be the channel's */
    assert_string_equal(try_sql(c, "INSERT INTO channel_members (channel_id, user_id, workspace_id)"
                                   " VALUES (" CH ", " UA ", " W2 ")"), "23503");
    assert_string_equal(try_sql(c, "INSERT INTO messages (channel_id, workspace_id, seq, user_id, text)"
                                   " VALUES (" CH ", " W1 ", 1, " UA ", 'hi')"), "");
    assert_string_equal(try_sql(c, "INSERT INTO messages (channel_id, workspace_id, seq, user_id, text)"
                                   " VALUES (" CH ", " W1 ", 1, " UA ", 'again')"), "23505");
    assert_string_equal(try_sql(c, "INSERT INTO messages (channel_id, workspace_id, seq, user_id, text)"
                                   " VALUES (" CH ", " W1 ", 2, " UA ", repeat('x', 40001))"), "23514");
#undef W1
#undef W2
#undef UA
#undef UB
#undef CH
    PQfinish(c);
    drop_db(db);
}

/* An edited migration is refused with a message naming it, instead of leaving the
 * schema and the code apart; a row from before checksums adopts the current one. */
static void test_changed_migration_is_refused(void **state)
{
    (void)state;
    char db[256], err[1024];
    fresh_db("chk", db, sizeof db);
    assert_true(migrate_run(db, err, sizeof err) >= 0);
    PGconn *c = PQconnectdb(db);
    PQclear(PQexec(c, "UPDATE schema_migrations SET checksum = NULL WHERE version = 1"));
    assert_int_equal(migrate_run(db, err, sizeof err), 0); /* adopted */
    PQclear(PQexec(c, "UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1"));
    assert_true(migrate_run(db, err, sizeof err) < 0);
    if (!strstr(err, chorus_migrations[0].name) || !strstr(err, "changed"))
        fail_msg("unexpected message: %s", err);
    PQfinish(c);
    drop_db(db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_apply_then_noop),
        cmocka_unit_test(test_concurrent_runs),
        cmocka_unit_test(test_constraints),
        cmocka_unit_test(test_changed_migration_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
