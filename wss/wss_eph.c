/* wss_eph.c - typing and presence: ephemeral events, never written to Postgres.
 *
 * Transport: capped Redis streams read by the node's one stream reader, not pub/sub:
 * the reader already follows a changing set of keys on one connection, resumes after
 * a reconnect without repeats, and keeps per-key order. Entries are small, capped
 * (XADD MAXLEN ~) and dropped when read more than WSS_EPH_MAX_AGE_MS after they were
 * made (a reader that comes back after an outage must not replay stale typing).
 *
 *   chorus:eph:<p>     typing in the channels of partition p; read while the node reads
 *                      chorus:ch:<p> (wss_fanout.c subscribes both)
 *   chorus:presence    presence changes of the whole fleet; every node reads it
 *
 * Presence is fleet-wide: a user is online while any node has a session of theirs.
 * chorus:presence:<user> is a hash node id -> 1; the node that adds the first field
 * announces "online", the one that removes the last announces "offline" (a Lua script
 * each, so two nodes never both announce). chorus:wss:users:<node> lists a node's users
 * so that a node which died without closing its sessions is swept by the others.
 * The event goes to the sessions of the user's workspaces (their members), but not to
 * the user's own sessions.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "chorus/buf.h"
#include "chorus/log.h"
#include "chorus/pgpool.h"
#include "chorus/rclient.h"
#include "chorus/rstream.h"
#include "chorus/status.h"
#include "chorus/wssreg.h"
#include "wss_internal.h"

#define WSS_EPH_MAX_AGE_MS 10000
#define TYPING_EVERY_S 1.0
#define SWEEP_USERS 500
#define WSS_DEAD_NODE_MS WSSREG_RECENT_MS /* as the gateway judges a node gone */

/* A batch of presence changes, in order: ARGV[1] the node, then pairs (1 open / 0
 * close, user); KEYS[1] the node's user set. Each user's field count after its change. */
static const char change_lua[] =
    "local out = {}"
    " for i = 2, #ARGV - 1, 2 do"
    "  local k = 'chorus:presence:' .. ARGV[i + 1]"
    "  if ARGV[i] == '1' then"
    "   redis.call('HSET', k, ARGV[1], 1) redis.call('SADD', KEYS[1], ARGV[i + 1])"
    "  else"
    "   redis.call('HDEL', k, ARGV[1]) redis.call('SREM', KEYS[1], ARGV[i + 1])"
    "  end"
    "  out[#out + 1] = redis.call('HLEN', k)"
    " end"
    " return out";
/* A dead node's users: drop its field, and list those left with none for the sweeper
 * to announce offline; the node leaves the set when done. */
static const char sweep_lua[] =
    "local out = {}"
    " for _, u in ipairs(redis.call('SPOP', KEYS[1], ARGV[2])) do"
    "  local k = 'chorus:presence:' .. u"
    "  redis.call('HDEL', k, ARGV[1])"
    "  if redis.call('HLEN', k) == 0 then table.insert(out, u) end"
    " end"
    " if redis.call('SCARD', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[1]) end"
    " return out";

static int64_t now_us(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

static void on_reply(void *arg, redisReply *reply)
{
    (void)arg;
    if (reply && reply->type == REDIS_REPLY_ERROR)
        log_warn("wss: ephemeral event: %.*s", (int)reply->len, reply->str);
}

/* XADD of ev to key, capped, then the doorbell naming key (rstream.h); best effort
 * (ephemeral). */
static void publish(wss_node *n, const char *key, const char *maxlen, chorus_event *ev)
{
    rclient *r = app_redis(n->app);
    buf b;
    buf_init(&b, 0);
    ev->created_at_us = now_us();
    if (r && event_encode_msgpack(ev, &b) == CHORUS_OK) {
        const char *argv[] = {"XADD", key, "MAXLEN", "~", maxlen, "*", "e", b.data};
        size_t lens[] = {4, strlen(key), 6, 1, strlen(maxlen), 1, 1, b.len};
        if (rclient_command_argv(r, on_reply, NULL, 8, argv, lens) == CHORUS_OK)
            rstream_ring(r, key, strlen(key), on_reply, NULL);
    }
    buf_free(&b);
}

/* ---- typing ------------------------------------------------------------------------- */

void wss_typing(wss_session *s, json_t *op)
{
    json_t *ch = json_object_get(op, "ch");
    if (!json_is_integer(ch) || !wss_session_has(s, json_integer_value(ch))) {
        wss_session_send_error(s, "not_found", "ch is not a channel of this session");
        return;
    }
    double now = ev_now(app_loop(s->node->app));
    if (s->typing_ch == json_integer_value(ch) && now - s->typing_at < TYPING_EVERY_S)
        return; /* clients repeat it every few seconds; more is noise */
    s->typing_ch = json_integer_value(ch);
    s->typing_at = now;
    chorus_event ev = {.channel_id = s->typing_ch, .users = &s->user_id, .n_users = 1};
    snprintf(ev.type, sizeof ev.type, "typing");
    ev.data = json_pack("{s:I}", "user_id", (json_int_t)s->user_id);
    char key[48];
    snprintf(key, sizeof key, "chorus:eph:%lld",
             (long long)(s->typing_ch % s->node->cfg->partitions));
    publish(s->node, key, "1000", &ev);
    json_decref(ev.data);
}

static bool stale(const chorus_event *ev)
{
    return now_us() - ev->created_at_us > WSS_EPH_MAX_AGE_MS * 1000LL;
}

/* Sends j (taken) to each session of the list but the user's own. */
static void to_others(wss_session *const *ss, int n, int64_t user, json_t *j)
{
    wss_frame *fr[2] = {NULL, NULL};
    for (int i = 0; j && i < n; i++) {
        if (ss[i]->user_id == user)
            continue;
        bool mp = wss_session_is_msgpack(ss[i]);
        if (!fr[mp])
            fr[mp] = wss_frame_encode(j, mp);
        if (fr[mp])
            wss_session_deliver_now(ss[i], fr[mp]);
    }
    wss_frame_unref(fr[0]);
    wss_frame_unref(fr[1]);
    json_decref(j);
}

void wss_eph_typing_event(wss_node *n, const chorus_event *ev)
{
    if (stale(ev) || ev->n_users != 1 || !n->fanout)
        return;
    int count;
    wss_session **ss = wss_fanout_channel_sessions(n->fanout, ev->channel_id, &count);
    to_others(ss, count, ev->users[0],
              json_pack("{s:s,s:I,s:{s:I}}", "t", "typing", "ch", (json_int_t)ev->channel_id,
                        "d", "user_id", (json_int_t)ev->users[0]));
    free(ss);
}

/* ---- presence ----------------------------------------------------------------------- */

static void announce(wss_node *n, int64_t user, const char *status)
{
    chorus_event ev = {.users = &user, .n_users = 1};
    snprintf(ev.type, sizeof ev.type, "presence");
    ev.data = json_pack("{s:I,s:s}", "user_id", (json_int_t)user, "status", status);
    publish(n, "chorus:presence", "10000", &ev);
    json_decref(ev.data);
}

/* A loop iteration's presence changes go to Redis as one script call of at most
 * PRESENCE_BATCH, sent just before the loop waits. One EVAL per change was 13,000
 * commands pending on each node when the 100k load test's sessions all closed at once,
 * more than Redis answered in 5 s: every node dropped its Redis connection as dead. */
#define PRESENCE_BATCH 512

typedef struct wss_presence_batch {
    wss_node *n;
    int count;
    int64_t users[PRESENCE_BATCH];
    bool online[PRESENCE_BATCH];
} wss_presence_batch;

static void on_changed(void *arg, redisReply *reply)
{
    wss_presence_batch *b = arg;
    if (reply && reply->type == REDIS_REPLY_ERROR)
        log_warn("wss: presence: %.*s", (int)reply->len, reply->str);
    for (int i = 0; reply && reply->type == REDIS_REPLY_ARRAY && i < b->count &&
                    (size_t)i < reply->elements;
         i++)
        if (reply->element[i]->type == REDIS_REPLY_INTEGER &&
            reply->element[i]->integer == (b->online[i] ? 1 : 0))
            announce(b->n, b->users[i], b->online[i] ? "online" : "offline");
    free(b);
}

/* Sends the filling batch, if any. */
static void presence_send(wss_node *n)
{
    wss_presence_batch *b = n->presence_filling;
    rclient *r = app_redis(n->app);
    n->presence_filling = NULL;
    if (!b || !r) {
        free(b);
        return;
    }
    enum { FIXED = 5 };
    static const char *argv[FIXED + 2 * PRESENCE_BATCH];
    static char users[PRESENCE_BATCH][24];
    char key[160];
    snprintf(key, sizeof key, "chorus:wss:users:%s", n->node_id);
    argv[0] = "EVAL";
    argv[1] = change_lua;
    argv[2] = "1";
    argv[3] = key;
    argv[4] = n->node_id;
    for (int i = 0; i < b->count; i++) {
        snprintf(users[i], sizeof users[i], "%lld", (long long)b->users[i]);
        argv[FIXED + 2 * i] = b->online[i] ? "1" : "0";
        argv[FIXED + 2 * i + 1] = users[i];
    }
    if (rclient_command_argv(r, on_changed, b, FIXED + 2 * b->count, argv, NULL) != CHORUS_OK)
        free(b);
}

static void on_presence_flush(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)revents;
    ev_prepare_stop(loop, w);
    presence_send(w->data);
}

static void presence_change(wss_session *s, bool online)
{
    wss_node *n = s->node;
    wss_presence_batch *b = n->presence_filling;
    if (n->presence_stopped) /* what is left the others' sweep of this node takes */
        return;
    if (!b && !(b = n->presence_filling = calloc(1, sizeof *b)))
        return;
    b->n = n;
    b->users[b->count] = s->user_id;
    b->online[b->count++] = online;
    if (b->count == PRESENCE_BATCH)
        presence_send(n);
    else
        ev_prepare_start(app_loop(n->app), &n->presence_flush);
}

void wss_presence_init(wss_node *n)
{
    ev_prepare_init(&n->presence_flush, on_presence_flush);
    n->presence_flush.data = n;
}

void wss_presence_flush(wss_node *n)
{
    ev_prepare_stop(app_loop(n->app), &n->presence_flush);
    presence_send(n);
    n->presence_stopped = true;
}

void wss_presence_opened(wss_session *s)
{
    int count;
    wss_session *const *ss = wss_fanout_user_sessions(s->node->fanout, s->user_id, &count);
    for (int i = 0; i < count; i++)
        if (ss[i]->presence)
            return; /* the node has announced this user already */
    s->presence = true;
    presence_change(s, true);
}

void wss_presence_closed(wss_session *s)
{
    if (!s->presence || !s->node->fanout)
        return;
    s->presence = false;
    int count;
    wss_session *const *ss = wss_fanout_user_sessions(s->node->fanout, s->user_id, &count);
    for (int i = 0; i < count; i++)
        if (ss[i] != s && ss[i]->loaded) {
            ss[i]->presence = true; /* another session of the user carries it on */
            return;
        }
    presence_change(s, false);
}

static json_t *presence_frame(int64_t user, const char *status)
{
    return json_pack("{s:s,s:{s:I,s:s}}", "t", "presence", "d", "user_id", (json_int_t)user,
                     "status", status);
}

void wss_eph_presence_event(wss_node *n, const chorus_event *ev)
{
    const char *status = json_string_value(json_object_get(ev->data, "status"));
    if (stale(ev) || ev->n_users != 1 || !status || !n->fanout)
        return;
    int count;
    wss_session *const *ss = wss_fanout_watchers(n->fanout, ev->users[0], &count);
    to_others(ss, count, ev->users[0], presence_frame(ev->users[0], status));
}

/* ---- presence_sub -------------------------------------------------------------------- */

/* Those of $2 who share a workspace with $1: nobody watches a stranger. */
const char wss_presence_peers_sql[] =
    "SELECT DISTINCT o.user_id FROM workspace_members me"
    "  JOIN workspace_members o ON o.workspace_id = me.workspace_id"
    " WHERE me.user_id = $1 AND o.user_id = ANY($2::bigint[]) AND o.user_id <> $1";

/* The current status of each watched user, one frame each. */
static void on_snapshot(void *arg, redisReply *reply)
{
    wss_session *s = arg;
    if (!wss_session_reply_came(s))
        return;
    for (int i = 0; reply && reply->type == REDIS_REPLY_ARRAY && i < s->nwatching &&
                    (size_t)i < reply->elements;
         i++)
        wss_session_send_json(s, presence_frame(s->watching[i],
                                                reply->element[i]->integer > 0 ? "online"
                                                                               : "offline"));
}

static void snapshot(wss_session *s)
{
    rclient *r = app_redis(s->node->app);
    if (!r || s->nwatching == 0)
        return;
    static const char lua[] =
        "local out = {} for i, k in ipairs(KEYS) do out[i] = redis.call('HLEN', k) end"
        " return out";
    const char **argv = calloc((size_t)s->nwatching + 3, sizeof *argv);
    char (*keys)[40] = calloc((size_t)s->nwatching, sizeof *keys);
    char nkeys[16];
    snprintf(nkeys, sizeof nkeys, "%d", s->nwatching);
    int argc = 0;
    if (argv && keys) {
        argv[argc++] = "EVAL";
        argv[argc++] = lua;
        argv[argc++] = nkeys;
        for (int i = 0; i < s->nwatching; i++) {
            snprintf(keys[i], sizeof keys[i], "chorus:presence:%lld", (long long)s->watching[i]);
            argv[argc++] = keys[i];
        }
        if (rclient_command_argv(r, on_snapshot, s, argc, argv, NULL) == CHORUS_OK)
            s->pending++;
    }
    free(argv);
    free(keys);
}

static void on_peers(void *arg, PGresult *res, const char *err)
{
    wss_session *s = arg;
    if (!wss_session_reply_came(s))
        return;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        log_warn("wss session %s: presence_sub: %s", s->id, res ? PQresultErrorMessage(res) : err);
        wss_session_send_error(s, "unavailable", "presence_sub failed: retry");
        return;
    }
    int n = PQntuples(res);
    int64_t *users = malloc((size_t)(n ? n : 1) * sizeof *users);
    for (int i = 0; users && i < n; i++)
        users[i] = atoll(PQgetvalue(res, i, 0));
    wss_session_watch(s, users, users ? n : 0);
    free(users);
    snapshot(s);
}

void wss_presence_sub(wss_session *s, json_t *op)
{
    json_t *users = json_object_get(op, "users");
    size_t n = json_array_size(users);
    if (!json_is_array(users) || n > WSS_MAX_WATCH) {
        wss_session_send_error(s, "bad_frame", "users: an array of at most 1000 user ids");
        return;
    }
    buf b;
    buf_init(&b, 0);
    buf_puts(&b, "{");
    size_t i;
    json_t *v;
    json_array_foreach(users, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) <= 0) {
            buf_free(&b);
            wss_session_send_error(s, "bad_frame", "users: an array of at most 1000 user ids");
            return;
        }
        buf_printf(&b, "%s%lld", i ? "," : "", (long long)json_integer_value(v));
    }
    buf_puts(&b, "}");
    char me[24];
    snprintf(me, sizeof me, "%lld", (long long)s->user_id);
    const char *params[] = {me, b.data};
    if (pgpool_query(s->node->pg, "wss_presence_peers", 2, params, on_peers, s) == CHORUS_OK)
        s->pending++;
    else
        wss_session_send_error(s, "unavailable", "presence_sub failed: retry");
    buf_free(&b);
}

/* ---- the sweep of dead nodes -------------------------------------------------------- */

static void on_swept(void *arg, redisReply *reply)
{
    wss_node *n = arg;
    for (size_t i = 0; reply && reply->type == REDIS_REPLY_ARRAY && i < reply->elements; i++)
        if (reply->element[i]->type == REDIS_REPLY_STRING)
            announce(n, atoll(reply->element[i]->str), "offline");
}

static void on_dead_nodes(void *arg, redisReply *reply)
{
    wss_node *n = arg;
    rclient *r = app_redis(n->app);
    for (size_t i = 0; r && reply && reply->type == REDIS_REPLY_ARRAY && i < reply->elements;
         i++) {
        const char *dead = reply->element[i]->str;
        if (!dead || strcmp(dead, n->node_id) == 0)
            continue;
        char key[160], count[16];
        snprintf(key, sizeof key, "chorus:wss:users:%s", dead);
        snprintf(count, sizeof count, "%d", SWEEP_USERS);
        const char *argv[] = {"EVAL", sweep_lua, "2", key, "chorus:wss:nodes", dead, count};
        rclient_command_argv(r, on_swept, n, 7, argv, NULL);
    }
}

/* Nodes that have not written their registry entry for WSS_DEAD_NODE_MS are dead
 * (their hash expired then too). */
void wss_presence_sweep(wss_node *n)
{
    rclient *r = app_redis(n->app);
    if (!r || !rclient_connected(r))
        return;
    char before[32];
    snprintf(before, sizeof before, "%.0f", ev_now(app_loop(n->app)) * 1000 - WSS_DEAD_NODE_MS);
    rclient_command(r, on_dead_nodes, n, "ZRANGEBYSCORE chorus:wss:nodes -inf %s LIMIT 0 4",
                    before);
}
