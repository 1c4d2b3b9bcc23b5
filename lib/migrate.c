/* migrate.c - apply the embedded migrations under an advisory lock (blocking libpq:
 * this is a start-up command, never loop code). */
#include "chorus/migrate.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "chorus/log.h"
#include "chorus/status.h"

/* An arbitrary constant shared by every Chorus process: "chorus" in ASCII. */
#define MIGRATE_LOCK_KEY "109315470225522"

static bool exec_ok(PGconn *c, const char *sql, char *err, size_t errlen)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok)
        snprintf(err, errlen, "%s", PQresultErrorMessage(r));
    PQclear(r);
    return ok;
}

static void ignore_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

static PGconn *connect_db(const char *conninfo, char *err, size_t errlen)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        snprintf(err, errlen, "cannot connect: %s", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    /* "relation ... already exists, skipping" is expected on every run after the first. */
    PQsetNoticeProcessor(c, ignore_notice, NULL);
    return c;
}

static int current_version(PGconn *c, char *err, size_t errlen)
{
    PGresult *r = PQexec(c, "SELECT coalesce(max(version), 0) FROM schema_migrations");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        snprintf(err, errlen, "%s", PQresultErrorMessage(r));
        PQclear(r);
        return CHORUS_ERR;
    }
    int v = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

/* 1 when version is applied with this very text, 0 when not applied, CHORUS_ERR when it
 * was applied from a different text (an edited migration: running on would leave the
 * schema and the code disagreeing, so say so instead). A row from before checksums
 * were recorded adopts the current one. */
static int applied_state(PGconn *c, const migration *m, char *err, size_t errlen)
{
    char v[16];
    snprintf(v, sizeof v, "%d", m->version);
    const char *params[] = {v, m->sql};
    PGresult *r = PQexecParams(c,
                               "UPDATE schema_migrations SET checksum = coalesce(checksum, md5($2))"
                               " WHERE version = $1::int RETURNING checksum = md5($2)",
                               2, NULL, params, NULL, NULL, 0);
    int state = 0;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        snprintf(err, errlen, "%s", PQresultErrorMessage(r));
        state = CHORUS_ERR;
    } else if (PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), "t") == 0) {
        state = 1;
    } else if (PQntuples(r) == 1) {
        snprintf(err, errlen,
                 "migration %s was changed after it was applied to this database (its "
                 "checksum differs): recreate the database, or restore the migration's text",
                 m->name);
        state = CHORUS_ERR;
    }
    PQclear(r);
    return state;
}

static int apply_one(PGconn *c, const migration *m, char *err, size_t errlen)
{
    if (!exec_ok(c, "BEGIN", err, errlen))
        return CHORUS_ERR;
    char v[16];
    snprintf(v, sizeof v, "%d", m->version);
    const char *params[] = {v, m->name, m->sql};
    PGresult *r = NULL;
    bool ok = exec_ok(c, m->sql, err, errlen);
    if (ok) {
        r = PQexecParams(c,
                         "INSERT INTO schema_migrations (version, name, checksum)"
                         " VALUES ($1::int, $2, md5($3))",
                         3, NULL, params, NULL, NULL, 0);
        ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok)
            snprintf(err, errlen, "%s", PQresultErrorMessage(r));
        PQclear(r);
    }
    if (!ok) {
        char ignored[64];
        exec_ok(c, "ROLLBACK", ignored, sizeof ignored);
        return CHORUS_ERR;
    }
    return exec_ok(c, "COMMIT", err, errlen) ? CHORUS_OK : CHORUS_ERR;
}

static int apply_pending(PGconn *c, char *err, size_t errlen)
{
    if (!exec_ok(c,
                 "CREATE TABLE IF NOT EXISTS schema_migrations ("
                 " version int PRIMARY KEY, name text NOT NULL,"
                 " applied_at timestamptz NOT NULL DEFAULT now())",
                 err, errlen) ||
        !exec_ok(c, "ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum text", err,
                 errlen))
        return CHORUS_ERR;
    int applied = 0;
    for (int i = 0; i < chorus_migrations_count; i++) {
        const migration *m = &chorus_migrations[i];
        int state = applied_state(c, m, err, errlen);
        if (state == CHORUS_ERR)
            return CHORUS_ERR;
        if (state == 1)
            continue;
        char why[900];
        if (apply_one(c, m, why, sizeof why) != CHORUS_OK) {
            snprintf(err, errlen, "migration %s failed: %s", m->name, why);
            return CHORUS_ERR;
        }
        log_info("migrate: applied %s", m->name);
        applied++;
    }
    return applied;
}

int migrate_run(const char *conninfo, char *err, size_t errlen)
{
    PGconn *c = connect_db(conninfo, err, errlen);
    if (!c)
        return CHORUS_ERR;
    /* A session lock: concurrent starts wait here, then find nothing left to do. */
    if (!exec_ok(c, "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")", err, errlen)) {
        PQfinish(c);
        return CHORUS_ERR;
    }
    int n = apply_pending(c, err, errlen);
    char ignored[64];
    exec_ok(c, "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")", ignored, sizeof ignored);
    PQfinish(c);
    return n;
}

int migrate_current(const char *conninfo, char *err, size_t errlen)
{
    PGconn *c = connect_db(conninfo, err, errlen);
    if (!c)
        return CHORUS_ERR;
    int v = current_version(c, err, errlen);
    PQfinish(c);
    return v;
}
