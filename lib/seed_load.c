/* seed_load.c - `chorus seed-load USERS CHANNELS MEMBERS [WORKSPACES]`: the load-test
 * population in one transaction (issue 7: a bulk path, not 100,000 signups).
 *
 * WORKSPACES (default 1) workspaces "load-<n>-<w>" (n: a fresh number, so runs never
 * collide), USERS users who cannot log in (no password; they hold tokens), CHANNELS
 * public channels, channel k in workspace k % WORKSPACES, and MEMBERS members per
 * channel: channel k has the users k*MEMBERS .. k*MEMBERS+MEMBERS-1 counted round the
 * user list, so 100,000 users in 1,000 channels of 100 are each in one channel. Each user
 * is a member of the workspaces of its channels; the first user owns them all. Rows are
 * written directly with generate_series, like seed-demo, without outbox events: nobody
 * is connected yet.
 *
 * Output, for the harness (one item a line, tab-separated):
 *   workspace <id>                       (one line per workspace)
 *   channel <id> <index of its first member> <members> <workspace id>
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
    return app_sql(c, "seed-load", sql, n, params);
}

/* The users, in index order; their ids go to ids[] (USERS of them). */
static const char users_sql[] =
    "WITH run AS (SELECT nextval(pg_get_serial_sequence('users', 'id')) AS n)"
    " INSERT INTO users (email, name, password_hash)"
    " SELECT 'load' || run.n || '-' || i || '@load.chorus.dev', 'load ' || i, '!'"
    " FROM run, generate_series(0, $1::int - 1) i ORDER BY i RETURNING id";

/* W workspaces "load-<first user>-<w>", owned by the first user. */
static const char workspaces_sql[] =
    "INSERT INTO workspaces (name, slug, created_by)"
    " SELECT 'Load ' || w, 'load-' || $1::bigint || '-' || w, $1::bigint"
    " FROM generate_series(0, $2::int - 1) w ORDER BY w RETURNING id";

/* Channel k is in workspace k % W and its members are users[(k*M + j) % N], j < M; each
 * user joins the workspaces of its channels (the first user owns all of them). */
static const char ws_members_sql[] =
    "INSERT INTO workspace_members (workspace_id, user_id, role)"
    " SELECT DISTINCT w.ids[1 + k % $2::int], u.ids[1 + ((k * $3::int + j) % $4::int)],"
    "        'member'"
    " FROM (SELECT $1::bigint[] AS ids) w, (SELECT $5::bigint[] AS ids) u,"
    "      generate_series(0, $6::int - 1) k, generate_series(0, $3::int - 1) j"
    " ON CONFLICT DO NOTHING";

/* First, so the members' insert leaves the owner's row as it is. */
static const char owners_sql[] =
    "INSERT INTO workspace_members (workspace_id, user_id, role)"
    " SELECT w, $2::bigint, 'owner' FROM unnest($1::bigint[]) w";

static const char channels_sql[] =
    "INSERT INTO channels (workspace_id, name, private, created_by)"
    " SELECT w.ids[1 + k % $4::int], 'load-' || k, false, $2::bigint"
    " FROM (SELECT $1::bigint[] AS ids) w, generate_series(0, $3::int - 1) k"
    " ORDER BY k RETURNING id, workspace_id";

static const char members_sql[] =
    "INSERT INTO channel_members (channel_id, user_id, workspace_id)"
    " SELECT ch.id, u.ids[1 + ((ch.k * $3::int + j) % $4::int)], ch.ws"
    " FROM (SELECT c.id, c.ws, c.ord - 1 AS k"
    "       FROM unnest($1::bigint[], $2::bigint[]) WITH ORDINALITY AS c(id, ws, ord)) ch,"
    "      (SELECT $5::bigint[] AS ids) u, generate_series(0, $3::int - 1) j"
    " ON CONFLICT DO NOTHING";

/* "{1,2,3}" of column col of r. */
static char *id_array(PGresult *r, int col)
{
    size_t cap = 16 + (size_t)PQntuples(r) * 21, len = 0;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    out[len++] = '{';
    for (int i = 0; i < PQntuples(r); i++)
        len += (size_t)snprintf(out + len, cap - len, "%s%s", i ? "," : "", PQgetvalue(r, i, col));
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
    int users, channels, members, workspaces;
} shape;

typedef struct rows {
    PGresult *users, *ws, *chans;
    char *uids, *wsids, *cids, *cws;
} rows;

static void rows_free(rows *r)
{
    PQclear(r->users);
    PQclear(r->ws);
    PQclear(r->chans);
    free(r->uids);
    free(r->wsids);
    free(r->cids);
    free(r->cws);
}

static int write_rows(PGconn *c, shape s, rows *r)
{
    char n[16], nc[16], m[16], nw[16];
    snprintf(n, sizeof n, "%d", s.users);
    snprintf(nc, sizeof nc, "%d", s.channels);
    snprintf(m, sizeof m, "%d", s.members);
    snprintf(nw, sizeof nw, "%d", s.workspaces);
    const char *pu[] = {n};
    if (!(r->users = exec(c, users_sql, 1, pu)) || !(r->uids = id_array(r->users, 0)))
        return CHORUS_ERR;
    const char *owner = PQgetvalue(r->users, 0, 0);
    const char *pw[] = {owner, nw};
    if (!(r->ws = exec(c, workspaces_sql, 2, pw)) || !(r->wsids = id_array(r->ws, 0)))
        return CHORUS_ERR;
    const char *po[] = {r->wsids, owner};
    const char *pm[] = {r->wsids, nw, m, n, r->uids, nc};
    if (app_sql_run(c, "seed-load", owners_sql, 2, po) != CHORUS_OK ||
        app_sql_run(c, "seed-load", ws_members_sql, 6, pm) != CHORUS_OK)
        return CHORUS_ERR;
    const char *pc[] = {r->wsids, owner, nc, nw};
    if (!(r->chans = exec(c, channels_sql, 4, pc)) || !(r->cids = id_array(r->chans, 0)) ||
        !(r->cws = id_array(r->chans, 1)))
        return CHORUS_ERR;
    const char *pcm[] = {r->cids, r->cws, m, n, r->uids};
    return app_sql_run(c, "seed-load", members_sql, 5, pcm);
}

static int populate(PGconn *c, const chorus_config *cfg, shape s)
{
    rows r = {0};
    int rc = write_rows(c, s, &r);
    if (rc == CHORUS_OK) {
        for (int w = 0; w < PQntuples(r.ws); w++)
            printf("workspace\t%s\n", PQgetvalue(r.ws, w, 0));
        for (int k = 0; k < PQntuples(r.chans); k++)
            printf("channel\t%s\t%lld\t%d\t%s\n", PQgetvalue(r.chans, k, 0),
                   (long long)k * s.members % s.users, s.members, PQgetvalue(r.chans, k, 1));
        rc = print_tokens(cfg, r.users);
    }
    rows_free(&r);
    return rc;
}

int app_seed_load(const chorus_config *cfg, int argc, char **argv)
{
    shape s = {0, 0, 0, 1};
    if (argc >= 3) {
        s.users = atoi(argv[0]);
        s.channels = atoi(argv[1]);
        s.members = atoi(argv[2]);
    }
    if (argc >= 4)
        s.workspaces = atoi(argv[3]);
    if (s.users < 1 || s.users > LOAD_MAX_USERS || s.channels < 1 || s.members < 1 ||
        s.members > s.users || s.workspaces < 1 || s.workspaces > s.channels) {
        fprintf(stderr, "usage: chorus seed-load USERS CHANNELS MEMBERS [WORKSPACES] (1 <= "
                        "MEMBERS <= USERS <= %d, 1 <= WORKSPACES <= CHANNELS)\n",
                LOAD_MAX_USERS);
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
    /* Vacuumed and analyzed now, not when autovacuum gets round to it. Statistics:
     * planned on the empty tables' estimates, a session's channel query walked every
     * channel of the workspace for each user (10 ms for 128 users among 81 channels, not
     * 3 ms). Vacuum: the tables' visibility maps, else autovacuum's first pass does it
     * for the whole population (100,000 users, 100,000 members) a minute into the load,
     * in the middle of the test, with an ANALYZE that makes every backend plan again. */
    e = rc == 0 ? exec(c, "VACUUM (ANALYZE) users, workspaces, workspace_members, channels,"
                          " channel_members", 0, NULL) : NULL;
    rc = rc == 0 && e ? 0 : 1;
    PQclear(e);
    PQfinish(c);
    return rc == 0 && fflush(stdout) == 0 ? 0 : 1;
}
