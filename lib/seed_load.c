/* seed_load.c - `chorus seed-load USERS CHANNELS MEMBERS`: the load-test population in
 * one transaction (issue 7: a bulk path, not 100,000 signups).
 *
 * A workspace "load-<n>" (n: a fresh number, so runs never collide), USERS users who
 * cannot log in (no password; they hold tokens), CHANNELS public channels, and MEMBERS
 * members per channel: channel k has the users k*MEMBERS .. k*MEMBERS+MEMBERS-1 counted
 * round the user list, so 100,000 users in 1,000 channels of 100 are each in one channel.
 * Rows are written directly with generate_series, like seed-demo, without outbox
 * events: nobody is connected yet.
 *
 * Output, for the harness (one item a line, tab-separated):
 *   workspace <id>
 *   channel <id> <index of its first member> <members>
 *   user <index> <id> <token>
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "app_internal.h"
#include "chorus/jwt.h"
#include "chorus/log.h"
#include "chorus/status.h"

#define LOAD_MAX_USERS 10000000

static PGresult *exec(PGconn *c, const char *sql, int n, const char *const *params)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        log_error("seed-load: %s", PQresultErrorMessage(r));
        PQclear(r);
        return NULL;
    }
    return r;
}

/* The users, in index order; their ids go to ids[] (USERS of them). */
static const char users_sql[] =
    "WITH run AS (SELECT nextval(pg_get_serial_sequence('users', 'id')) AS n)"
    " INSERT INTO users (email, name, password_hash)"
    " SELECT 'load' || run.n || '-' || i || '@load.chorus.dev', 'load ' || i, '!'"
    " FROM run, generate_series(0, $1::int - 1) i ORDER BY i RETURNING id";

static const char workspace_sql[] =
    "WITH ws AS (INSERT INTO workspaces (name, slug, created_by)"
    "  VALUES ('Load', 'load-' || $1::bigint, $1::bigint) RETURNING id)"
    " INSERT INTO workspace_members (workspace_id, user_id, role)"
    " SELECT ws.id, u, CASE WHEN u = $1::bigint THEN 'owner' ELSE 'member' END"
    " FROM ws, unnest($2::bigint[]) u RETURNING workspace_id";

static const char channels_sql[] =
    "INSERT INTO channels (workspace_id, name, private, created_by)"
    " SELECT $1::bigint, 'load-' || k, false, $2::bigint"
    " FROM generate_series(0, $3::int - 1) k ORDER BY k RETURNING id";

/* Channel k's members: users[(k*M + j) % N] for j < M. */
static const char members_sql[] =
    "INSERT INTO channel_members (channel_id, user_id, workspace_id)"
    " SELECT ch.id, u.ids[1 + ((ch.k * $3::int + j) % $4::int)], $1::bigint"
    " FROM (SELECT id, row_number() OVER (ORDER BY ord) - 1 AS k"
    "       FROM unnest($2::bigint[]) WITH ORDINALITY AS c(id, ord)) ch,"
    "      (SELECT $5::bigint[] AS ids) u, generate_series(0, $3::int - 1) j"
    " ON CONFLICT DO NOTHING";

/* "{1,2,3}" of the first column of r. */
static char *id_array(PGresult *r)
{
    size_t cap = 16 + (size_t)PQntuples(r) * 21, len = 0;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    out[len++] = '{';
    for (int i = 0; i < PQntuples(r); i++)
        len += (size_t)snprintf(out + len, cap - len, "%s%s", i ? "," : "", PQgetvalue(r, i, 0));
    snprintf(out + len, cap - len, "}");
    return out;
}

static int print_tokens(const chorus_config *cfg, PGresult *users)
{
    int64_t now = (int64_t)time(NULL);
    size_t slen = strlen(cfg->jwt_secret);
    for (int i = 0; i < PQntuples(users); i++) {
        char token[512];
        if (jwt_sign(cfg->jwt_secret, slen, atoll(PQgetvalue(users, i, 0)), now,
                     now + cfg->jwt_ttl_s, token, sizeof token) != CHORUS_OK)
            return CHORUS_ERR;
        printf("user\t%d\t%s\t%s\n", i, PQgetvalue(users, i, 0), token);
    }
    return CHORUS_OK;
}

typedef struct shape {
    int users, channels, members;
} shape;

static int populate(PGconn *c, const chorus_config *cfg, shape s)
{
    char n[16], nc[16], m[16];
    snprintf(n, sizeof n, "%d", s.users);
    snprintf(nc, sizeof nc, "%d", s.channels);
    snprintf(m, sizeof m, "%d", s.members);
    const char *pu[] = {n};
    PGresult *users = exec(c, users_sql, 1, pu);
    char *uids = users ? id_array(users) : NULL;
    const char *pw[] = {users ? PQgetvalue(users, 0, 0) : "", uids};
    PGresult *ws = uids ? exec(c, workspace_sql, 2, pw) : NULL;
    const char *wsid = ws && PQntuples(ws) ? PQgetvalue(ws, 0, 0) : NULL;
    const char *pc[] = {wsid, pw[0], nc};
    PGresult *chans = wsid ? exec(c, channels_sql, 3, pc) : NULL;
    char *cids = chans ? id_array(chans) : NULL;
    const char *pm[] = {wsid, cids, m, n, uids};
    PGresult *mem = cids ? exec(c, members_sql, 5, pm) : NULL;
    int rc = mem ? CHORUS_OK : CHORUS_ERR;
    if (rc == CHORUS_OK) {
        printf("workspace\t%s\n", wsid);
        for (int k = 0; k < PQntuples(chans); k++)
            printf("channel\t%s\t%lld\t%d\n", PQgetvalue(chans, k, 0),
                   (long long)k * s.members % s.users, s.members);
        rc = print_tokens(cfg, users);
    }
    PQclear(mem);
    free(cids);
    PQclear(chans);
    PQclear(ws);
    free(uids);
    PQclear(users);
    return rc;
}

int app_seed_load(const chorus_config *cfg, int argc, char **argv)
{
    shape s = {0};
    if (argc >= 3) {
        s.users = atoi(argv[0]);
        s.channels = atoi(argv[1]);
        s.members = atoi(argv[2]);
    }
    if (s.users < 1 || s.users > LOAD_MAX_USERS || s.channels < 1 || s.members < 1 ||
        s.members > s.users) {
        fprintf(stderr, "usage: chorus seed-load USERS CHANNELS MEMBERS (1 <= MEMBERS <= USERS"
                        " <= %d)\n", LOAD_MAX_USERS);
        return 2;
    }
    if (strlen(cfg->jwt_secret) < 32) {
        log_error("seed-load: jwt_secret must have at least 32 bytes");
        return 2;
    }
    PGconn *c = PQconnectdb(cfg->database_url);
    if (PQstatus(c) != CONNECTION_OK) {
        log_error("seed-load: cannot connect: %s", PQerrorMessage(c));
        PQfinish(c);
        return 1;
    }
    PGresult *b = exec(c, "BEGIN", 0, NULL);
    int rc = b ? populate(c, cfg, s) : CHORUS_ERR;
    PQclear(b);
    PGresult *e = exec(c, rc == CHORUS_OK ? "COMMIT" : "ROLLBACK", 0, NULL);
    rc = rc == CHORUS_OK && e ? 0 : 1;
    PQclear(e);
    /* Statistics now, not when autovacuum gets round to it: planned on the empty
     * tables' estimates, a session's channel query walked every channel of the
     * workspace for each user (10 ms for 128 users among 81 channels, not 3 ms). */
    e = rc == 0 ? exec(c, "ANALYZE users, workspaces, workspace_members, channels,"
                          " channel_members", 0, NULL) : NULL;
    rc = rc == 0 && e ? 0 : 1;
    PQclear(e);
    PQfinish(c);
    return rc == 0 && fflush(stdout) == 0 ? 0 : 1;
}
