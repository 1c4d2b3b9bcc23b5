/* seed.c - `chorus seed-demo`: a demo workspace to try Chorus with. Idempotent.
 *
 * It writes rows directly rather than through the REST write path: it runs before any
 * client can be connected, so there is nobody to deliver outbox events to, and the
 * channels start at seq 0 like any new channel. Blocking libpq: a CLI step. */
#include <stdio.h>
#include <string.h>

#include <libpq-fe.h>

#include "app_internal.h"
#include "chorus/log.h"
#include "chorus/password.h"
#include "chorus/status.h"

#define DEMO_PASSWORD "chorus-demo"

static const char *const demo_users[][2] = {
    {"alice@demo.chorus.dev", "Alice"},
    {"bob@demo.chorus.dev", "Bob"},
    {"carol@demo.chorus.dev", "Carol"},
};

PGresult *app_sql(PGconn *c, const char *who, const char *sql, int n,
                  const char *const *params)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        log_error("%s: %s", who, PQresultErrorMessage(r));
        PQclear(r);
        return NULL;
    }
    return r;
}

int app_sql_run(PGconn *c, const char *who, const char *sql, int n, const char *const *params)
{
    PGresult *r = app_sql(c, who, sql, n, params);
    int rc = r ? CHORUS_OK : CHORUS_ERR;
    PQclear(r);
    return rc;
}

static int run(PGconn *c, const char *sql, int n, const char *const *params)
{
    return app_sql_run(c, "seed-demo", sql, n, params);
}

static int seed_users(PGconn *c)
{
    for (size_t i = 0; i < sizeof demo_users / sizeof demo_users[0]; i++) {
        char hash[160];
        if (password_hash(DEMO_PASSWORD, PASSWORD_SCRYPT_LN, hash, sizeof hash) != CHORUS_OK)
            return CHORUS_ERR;
        const char *p[] = {demo_users[i][0], demo_users[i][1], hash};
        if (run(c,
                "INSERT INTO users (email, name, password_hash)"
                " SELECT $1, $2, $3 WHERE NOT EXISTS"
                " (SELECT 1 FROM users WHERE lower(email) = lower($1))",
                3, p) != CHORUS_OK)
            return CHORUS_ERR;
    }
    return CHORUS_OK;
}

static const char seed_sql[] =
    "WITH alice AS (SELECT id FROM users WHERE lower(email) = 'alice@demo.chorus.dev'),"
    " ws AS (INSERT INTO workspaces (name, slug, created_by)"
    "        SELECT 'Demo', 'demo', id FROM alice ON CONFLICT (slug) DO NOTHING RETURNING id)"
    " SELECT 1";

static const char members_sql[] =
    "INSERT INTO workspace_members (workspace_id, user_id, role)"
    " SELECT w.id, u.id, CASE WHEN lower(u.email) = 'alice@demo.chorus.dev' THEN 'owner'"
    "                        ELSE 'member' END"
    " FROM workspaces w, users u"
    " WHERE w.slug = 'demo' AND lower(u.email) LIKE '%@demo.chorus.dev'"
    " ON CONFLICT DO NOTHING";

static const char channels_sql[] =
    "INSERT INTO channels (workspace_id, name, private, created_by)"
    " SELECT w.id, c.name, c.private, w.created_by"
    " FROM workspaces w, (VALUES ('general', false), ('random', false),"
    "                            ('secret-plans', true)) AS c(name, private)"
    " WHERE w.slug = 'demo' AND NOT EXISTS (SELECT 1 FROM channels x"
    "   WHERE x.workspace_id = w.id AND lower(x.name) = c.name AND x.deleted_at IS NULL)";

/* Everyone is in the public channels; only Alice and Bob are in the private one. */
static const char channel_members_sql[] =
    "INSERT INTO channel_members (channel_id, user_id, workspace_id)"
    " SELECT c.id, m.user_id, c.workspace_id"
    " FROM channels c JOIN workspaces w ON w.id = c.workspace_id"
    " JOIN workspace_members m ON m.workspace_id = w.id JOIN users u ON u.id = m.user_id"
    " WHERE w.slug = 'demo' AND c.deleted_at IS NULL"
    "   AND (NOT c.private OR lower(u.email) IN ('alice@demo.chorus.dev', 'bob@demo.chorus.dev'))"
    " ON CONFLICT DO NOTHING";

int app_seed_demo(const chorus_config *cfg)
{
    PGconn *c = PQconnectdb(cfg->database_url);
    if (PQstatus(c) != CONNECTION_OK) {
        log_error("seed-demo: cannot connect: %s", PQerrorMessage(c));
        PQfinish(c);
        return 1;
    }
    int rc = run(c, "BEGIN", 0, NULL);
    if (rc == CHORUS_OK)
        rc = seed_users(c);
    const char *steps[] = {seed_sql, members_sql, channels_sql, channel_members_sql, "COMMIT"};
    for (size_t i = 0; rc == CHORUS_OK && i < sizeof steps / sizeof steps[0]; i++)
        rc = run(c, steps[i], 0, NULL);
    PQfinish(c);
    if (rc != CHORUS_OK)
        return 1;
    printf("Demo workspace 'demo' with channels #general, #random and private #secret-plans.\n"
           "Users (password '%s'):", DEMO_PASSWORD);
    for (size_t i = 0; i < sizeof demo_users / sizeof demo_users[0]; i++)
        printf(" %s", demo_users[i][0]);
    printf("\n");
    return 0;
}
