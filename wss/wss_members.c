/* wss_members.c - a user's channels for a new session (wss_members.h).
 *
 * Without a cache a reconnect storm (a node dies, 15,000 clients come back) runs the
 * channel query 15,000 times. The list is cached in Redis (chorus/memv.h) and trusted
 * only under the user's membership version:
 *
 *   read  MGET chorus:members:<u> chorus:memv:<u>, one round trip. A hit is a list
 *         whose tag is exactly the current version; anything else (and Redis down or
 *         failing) runs the query.
 *   fill  after the query, one script stores "<v>|<list>" only if the version is still
 *         v, the one read *before* the query (with no version key yet, it creates one,
 *         seeded from the clock, and tags the list with it).
 *   bump  the outbox worker bumps the version of every user of a membership event
 *         after the change committed, before the event is on a stream
 *         (outbox-worker/outbox_memv.c).
 *
 * Why a hit is right: a list tagged v came from a snapshot taken after v was read, and
 * the version was still v when it was stored. A change that snapshot missed committed
 * after it, so its bump came later still: before the store (which is then refused) or
 * after it (the version is no longer v, and the list is never used again). A version
 * never returns to a value it had (memv.h), so no old list can match again. A list is
 * therefore stale only between a change's commit and its bump, the outbox lag, which
 * is also how long connected sessions take to hear of the change. The expiry is a
 * backstop for changes made outside the API (SQL by hand, demo seeding).
 */
#include "wss_members.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chorus/buf.h"
#include "chorus/memv.h"
#include "chorus/metrics.h"
#include "chorus/pgpool.h"
#include "chorus/rclient.h"
#include "chorus/status.h"
#include "wss_internal.h"

#define CACHE_TTL_S "600"

/* KEYS[1] the list, KEYS[2] the version; ARGV[1] the version read before the query
 * ("" for none), ARGV[2] the list, ARGV[3] the expiry in seconds. */
static const char fill_lua[] =
    "local v = redis.call('GET', KEYS[2]) or ''"
    " if v ~= ARGV[1] then return 0 end"
    " if v == '' then " MEMV_LUA_NOW
    "  v = now redis.call('SET', KEYS[2], v, 'EX', ARGV[3]) end"
    " redis.call('SET', KEYS[1], v .. '|' .. ARGV[2], 'EX', ARGV[3])"
    " return 1";

/* The channels of a batch of users; deleted channels deliver nothing. $1 is the users
 * in load order; each row says which of them (its ordinal) it belongs to. Bounded like
 * a user's memberships can reasonably be. */
static const char channels_sql[] =
    "SELECT u.ord, x.channel_id FROM unnest($1::bigint[]) WITH ORDINALITY AS u(id, ord),"
    " LATERAL (SELECT m.channel_id FROM channel_members m"
    "           JOIN channels c ON c.id = m.channel_id"
    "          WHERE m.user_id = u.id AND c.deleted_at IS NULL LIMIT 10000) x"
    " ORDER BY u.ord";

/* Loads waiting for the next query (wss_batch.h): a connect storm (a node restarts, its clients come
 * back) asks for thousands of lists a second, and one query per list would queue them
 * behind the pool for seconds. Those that arrive in one loop iteration go out as one
 * query (ev_prepare runs just before the loop waits), so a quiet node adds no delay.
 *
 * At most INFLIGHT_MAX queries are out at once; meanwhile loads gather into batches
 * of up to BATCH_MAX. Without that bound a busy node sent one small batch per loop
 * iteration: in the 100k load test, on a busy host, the newest replica (taking 2,000
 * sessions a second) filled its pool's queue within 4 s and refused 235-1,177 sessions,
 * which reconnected. Two in flight also leave the pool's other connections to resumes
 * and posts. Full batches wait in a FIFO of at most WAITING_MAX (more than a node's
 * sessions can fill: 20,000 / 128 = 157); past it a batch fails, and its sessions too. */
#define BATCH_MAX 128
#define INFLIGHT_MAX 2
#define WAITING_MAX 256

typedef struct members_load members_load;

static bool send_batch(void *ctx, wss_batch *b);
static void batch_fail(void *ctx, wss_batch *b, const char *err);

/* One role per process runs a node, so the series are the module's own. */
static struct {
    metrics_series *from_cache, *from_pg, *err_redis, *err_pg, *queries;
} m;

struct members_load {
    wss_node *node;
    int64_t user;
    wss_members_cb cb;
    void *arg;
    bool fill;        /* the cache read answered: store what the query returns */
    char version[32]; /* the version read before the query; "" when there was none */
};

int wss_members_init(wss_node *node)
{
    metrics_family *loads =
        metrics_family_new(METRICS_COUNTER, "chorus_wss_membership_loads_total",
                           "channel lists of new sessions by source", "source", NULL, 0);
    metrics_family *errs =
        metrics_family_new(METRICS_COUNTER, "chorus_wss_membership_errors_total",
                           "failed membership cache reads and fills (redis), failed "
                           "channel queries (postgres)", "kind", NULL, 0);
    m.from_cache = metrics_with1(loads, "cache");
    m.from_pg = metrics_with1(loads, "postgres");
    m.err_redis = metrics_with1(errs, "redis");
    m.err_pg = metrics_with1(errs, "postgres");
    m.queries = metrics_counter("chorus_wss_membership_queries_total",
                                "channel queries run for new sessions (each answers a batch)");
    wss_batcher_opts o = {.max_weight = BATCH_MAX, .inflight_max = INFLIGHT_MAX,
                          .waiting_max = WAITING_MAX, .send = send_batch, .fail = batch_fail,
                          .ctx = node,
                          .overflow_why = "too many sessions waiting for their channels"};
    node->members = wss_batcher_new(app_loop(node->app), &o);
    if (!node->members)
        return CHORUS_ERR;
    return pgpool_prepare(app_pg(node->app), "wss_channels", channels_sql);
}

/* One id of a list: 1 to 18 digits (ids are positive bigints far from overflow). */
static const char *parse_id(const char *p, const char *end, int64_t *out)
{
    int64_t v = 0;
    const char *start = p;
    for (; p < end && *p >= '0' && *p <= '9' && p - start < 18; p++)
        v = v * 10 + (*p - '0');
    *out = v;
    return p > start ? p : NULL;
}

int wss_members_decode(const char *value, size_t len, const char *version, size_t vlen,
                       int64_t **out)
{
    *out = NULL;
    const char *bar = memchr(value, '|', len), *end = value + len;
    if (!bar)
        return -2;
    if ((size_t)(bar - value) != vlen || memcmp(value, version, vlen) != 0)
        return -1;
    if (bar + 1 == end)
        return 0; /* a user without channels: a hit like any other */
    size_t n = 1;
    for (const char *c = bar + 1; c < end; c++)
        n += *c == ',';
    int64_t *ids = n <= WSS_MEMBERS_MAX ? malloc(n * sizeof *ids) : NULL;
    const char *p = bar + 1;
    for (size_t i = 0; ids && p && i < n; i++) {
        p = parse_id(p, end, &ids[i]);
        if (p && p < end && *p++ != ',')
            p = NULL;
    }
    if (!ids || !p || p != end) {
        free(ids);
        return -2;
    }
    *out = ids;
    return (int)n;
}

static void finish(members_load *ld, const int64_t *chans, int n, const char *err)
{
    ld->cb(ld->arg, chans, n, err);
    free(ld);
}

static void on_filled(void *arg, redisReply *reply)
{
    (void)arg;
    if (!reply || reply->type == REDIS_REPLY_ERROR)
        metrics_inc(m.err_redis);
}

/* "<ch>,<ch>,..." into list ("" for none). */
static int list_text(buf *list, const int64_t *chans, int n)
{
    int rc = buf_puts(list, "");
    for (int i = 0; i < n && rc == CHORUS_OK; i++)
        rc = buf_printf(list, "%s%lld", i ? "," : "", (long long)chans[i]);
    return rc;
}

/* Stores the list under the version read before the query, unless it moved since. */
static void cache_fill(const members_load *ld, const int64_t *chans, int n)
{
    rclient *r = app_redis(ld->node->app);
    buf list;
    buf_init(&list, 0);
    int rc = r ? list_text(&list, chans, n) : CHORUS_ERR;
    if (rc == CHORUS_OK) {
        char key[MEMV_KEY_MAX], vkey[MEMV_KEY_MAX];
        snprintf(key, sizeof key, MEMV_MEMBERS_PREFIX "%lld", (long long)ld->user);
        snprintf(vkey, sizeof vkey, MEMV_KEY_PREFIX "%lld", (long long)ld->user);
        const char *argv[] = {"EVAL", fill_lua, "2", key, vkey, ld->version, list.data,
                              CACHE_TTL_S};
        size_t lens[8];
        for (int i = 0; i < 8; i++)
            lens[i] = i == 6 ? list.len : strlen(argv[i]);
        rc = rclient_command_argv(r, on_filled, NULL, 8, argv, lens);
    }
    if (rc != CHORUS_OK)
        metrics_inc(m.err_redis);
    buf_free(&list);
}

/* One load of a batch answered: rows[*row..] whose ordinal is ord are its channels. */
static void answer_one(members_load *ld, PGresult *res, int *row, long long ord,
                       int64_t *chans)
{
    int n = 0, total = PQntuples(res);
    for (; *row < total && atoll(PQgetvalue(res, *row, 0)) == ord; ++*row)
        chans[n++] = atoll(PQgetvalue(res, *row, 1));
    metrics_inc(m.from_pg);
    if (ld->fill)
        cache_fill(ld, chans, n);
    finish(ld, chans, n, NULL);
}

static void batch_fail(void *ctx, wss_batch *b, const char *err)
{
    (void)ctx;
    for (int i = 0; i < b->n; i++)
        finish(b->items[i], NULL, 0, err);
}

static void answer_batch(wss_batch *b, PGresult *res, const char *err)
{
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        metrics_inc(m.err_pg);
        batch_fail(NULL, b, res ? PQresultErrorMessage(res) : err);
        return;
    }
    int64_t *chans = malloc((size_t)(PQntuples(res) ? PQntuples(res) : 1) * sizeof *chans);
    if (!chans) {
        batch_fail(NULL, b, "out of memory");
        return;
    }
    int row = 0;
    for (int i = 0; i < b->n; i++)
        answer_one(b->items[i], res, &row, i + 1, chans);
    free(chans);
}

static void on_rows(void *arg, PGresult *res, const char *err)
{
    wss_batch *b = arg;
    answer_batch(b, res, err);
    wss_batcher_done(b);
}

/* The users of the batch as an array literal "{1,2,...}". */
static int users_text(buf *out, const wss_batch *b)
{
    int rc = buf_puts(out, "{");
    for (int i = 0; i < b->n && rc == CHORUS_OK; i++)
        rc = buf_printf(out, "%s%lld", i ? "," : "",
                        (long long)((const members_load *)b->items[i])->user);
    return rc == CHORUS_OK ? buf_puts(out, "}") : rc;
}

/* Sends a batch as one query; each load's callback runs when it answers. */
static bool send_batch(void *ctx, wss_batch *b)
{
    wss_node *node = ctx;
    pgpool *pg = app_pg(node->app);
    buf users;
    buf_init(&users, 0);
    int rc = pg ? users_text(&users, b) : CHORUS_ERR;
    const char *params[] = {users.data};
    if (rc == CHORUS_OK)
        rc = pgpool_query(pg, "wss_channels", 1, params, on_rows, b);
    buf_free(&users);
    if (rc != CHORUS_OK) {
        batch_fail(NULL, b, "the channel query was refused (pool busy or stopping)");
        return false;
    }
    metrics_inc(m.queries);
    return true;
}

/* Queues the load for the next batch query. */
static void load_from_pg(members_load *ld)
{
    if (!wss_batcher_add(ld->node->members, ld, 1))
        finish(ld, NULL, 0, "out of memory");
}

void wss_members_stop(wss_node *node)
{
    wss_batcher_stop(node->members, "the node is stopping");
}

void wss_members_free(wss_node *node)
{
    wss_batcher_free(node->members, "the node is stopping");
    node->members = NULL;
}

/* The list if the cache holds one under the current version (its length, *chans
 * malloc'd), else -1, with what a fill needs remembered in ld. */
static int cache_answer(members_load *ld, redisReply *reply, int64_t **chans)
{
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2) {
        metrics_inc(m.err_redis);
        return -1;
    }
    redisReply *list = reply->element[0], *ver = reply->element[1];
    bool has_ver = ver->type == REDIS_REPLY_STRING && ver->len < sizeof ld->version;
    ld->fill = has_ver || ver->type == REDIS_REPLY_NIL;
    if (has_ver)
        memcpy(ld->version, ver->str, ver->len + 1);
    if (!has_ver || list->type != REDIS_REPLY_STRING)
        return -1;
    int n = wss_members_decode(list->str, list->len, ver->str, ver->len, chans);
    if (n == -2)
        metrics_inc(m.err_redis);
    return n;
}

static void on_cached(void *arg, redisReply *reply)
{
    members_load *ld = arg;
    int64_t *chans = NULL;
    int n = cache_answer(ld, reply, &chans);
    if (n >= 0) {
        metrics_inc(m.from_cache);
        finish(ld, chans, n, NULL);
        free(chans);
    } else {
        load_from_pg(ld);
    }
}

int wss_members_load(wss_node *node, int64_t user, wss_members_cb cb, void *arg)
{
    members_load *ld = malloc(sizeof *ld);
    if (!ld)
        return CHORUS_ERR;
    *ld = (members_load){.node = node, .user = user, .cb = cb, .arg = arg};
    rclient *r = app_redis(node->app);
    if (r && rclient_command(r, on_cached, ld, "MGET " MEMV_MEMBERS_PREFIX "%lld "
                             MEMV_KEY_PREFIX "%lld", (long long)user, (long long)user) == CHORUS_OK)
        return CHORUS_OK;
    metrics_inc(m.err_redis); /* Redis down or saturated: Postgres answers alone */
    load_from_pg(ld);
    return CHORUS_OK;
}
