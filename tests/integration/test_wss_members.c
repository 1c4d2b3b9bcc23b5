/* test_wss_members.c - the Redis membership cache of the WSS node (wss/wss_members.c)
 * and the version bumps of the outbox worker that keep it right
 * (outbox-worker/outbox_memv.c), on `chorus run --roles gateway,wss,outbox`.
 *
 * The test has a database and a Redis of its own: no other test's users (whose ids are
 * the same small numbers in their own databases) meet its cache keys, and it may stop
 * its Redis. One stream partition: every channel's events come on one stream, in order,
 * so a session that has not received channel X's message by the time a later message
 * of channel Y arrives never will. Which source answered a load is read from
 * chorus_wss_membership_loads_total; what a session got is seen by posting to it. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "api.h"
#include "testredis.h"
#include "wsclient.h"
#include "wstest.h"

static api_server S;
static test_redis R;
static redisContext *rc;
static int wss_port;

static int group_setup(void **state)
{
    (void)state;
    test_redis_init(&R, false);
    rc = test_redis_connect(&R);
    api_db_create(&S, "members");
    char url[96], env_redis[128];
    test_redis_url(&R, url, sizeof url);
    snprintf(env_redis, sizeof env_redis, "CHORUS_REDIS_URL=%s", url);
    const char *env[] = {env_redis, "CHORUS_PARTITIONS=1", NULL};
    wss_port = api_server_start_wss(&S, "members-test", env);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    api_server_stop(&S);
    api_db_drop(&S);
    redisFree(rc);
    return test_redis_destroy(&R);
}

/* ---- Redis and metrics ---------------------------------------------------------------- */

/* GET key (printf-style with one user id) as a heap string, NULL when absent. */
static char *rget(const char *fmt, long long user)
{
    redisReply *r = redisCommand(rc, "GET %s", api_p(fmt, user));
    assert_non_null(r);
    char *v = r->type == REDIS_REPLY_STRING ? strdup(r->str) : NULL;
    freeReplyObject(r);
    return v;
}

/* The user's membership version, 0 when there is none. */
static long long version(long long user)
{
    char *v = rget("chorus:memv:%lld", user);
    long long n = v ? atoll(v) : 0;
    free(v);
    return n;
}

/* The user's cached list is exactly "<current version>|<list>" (list: "" for none). */
static void expect_cached(long long user, const char *list)
{
    char *cached = rget("chorus:members:%lld", user);
    if (!cached)
        fail_msg("user %lld has no cached list", user);
    long long v = version(user);
    assert_true(v > 0);
    assert_string_equal(cached, api_p("%lld|%s", v, list));
    free(cached);
}

static void rcommand(const char *cmd, const char *key, const char *value)
{
    redisReply *r = value ? redisCommand(rc, "%s %s %s", cmd, key, value)
                          : redisCommand(rc, "%s %s", cmd, key);
    assert_non_null(r);
    assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
    freeReplyObject(r);
}

static double metric(const char *series)
{
    double v = test_metric(S.port, series);
    return v < 0 ? 0 : v;
}

#define REDIS_UP "chorus_redis_connected{client=\"main\"}"

static double loads(const char *source)
{
    return metric(api_p("chorus_wss_membership_loads_total{source=\"%s\"}", source));
}

/* Every outbox row is on the streams, so each bump is done (it precedes the mark). */
static void await_outbox_drained(void)
{
    const char *q = "SELECT count(*) FROM outbox WHERE published_at IS NULL";
    for (int64_t end = test_now_ms() + 10000; api_db_int(S.pg, q, NULL) > 0; usleep(20000))
        if (test_now_ms() > end)
            fail_msg("the outbox worker did not publish everything within 10 s");
}

/* A channel query of the node waits for a lock the test holds. */
static void await_query_on_lock(void)
{
    const char *waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                          " AND datname = current_database()";
    for (int64_t end = test_now_ms() + 5000; api_db_int(S.pg, waiting, NULL) < 1; usleep(10000))
        if (test_now_ms() > end)
            fail_msg("no channel query waited for the lock");
}

/* ---- sessions ----------------------------------------------------------------------- */

static json_t *next_json(ws_client *c, int timeout_ms)
{
    ws_frame f;
    if (ws_recv(c, &f, timeout_ms) != 0)
        return NULL;
    if (f.opcode != 1)
        fail_msg("expected a text frame, got opcode %d (close %d)", f.opcode, f.close_code);
    json_t *j = json_loadb(f.data, f.len, 0, NULL);
    ws_frame_free(&f);
    assert_non_null(j);
    return j;
}

static void expect_t(ws_client *c, const char *t)
{
    json_t *j = next_json(c, 5000);
    if (!j)
        fail_msg("no \"%s\" frame within 5 s", t);
    assert_string_equal(api_str(j, "t"), t);
    json_decref(j);
}

/* Opens a session for token and waits until its channel list is loaded; returns where
 * it came from ("cache" or "postgres"). A ping ends the hold of live events. */
static const char *open_session(ws_client *c, const char *token)
{
    double cache0 = loads("cache"), pg0 = loads("postgres");
    int st = ws_connect(c, wss_port, api_p("/ws?token=%s", token), "chorus.json", NULL);
    if (st != 101)
        fail_msg("upgrade answered %d", st);
    expect_t(c, "hello");
    for (int64_t end = test_now_ms() + 5000;; usleep(10000)) {
        double cache = loads("cache"), pg = loads("postgres");
        if (cache + pg >= cache0 + pg0 + 1) {
            assert_true(cache + pg == cache0 + pg0 + 1); /* this session's load only */
            assert_int_equal(ws_send_text(c, "{\"op\":\"ping\"}"), 0);
            expect_t(c, "pong");
            return cache > cache0 ? "cache" : "postgres";
        }
        if (test_now_ms() > end)
            fail_msg("the session's channels were not loaded within 5 s");
    }
}

/* open_session, whose channels must come from source ("cache" or "postgres"). */
static void open_from(ws_client *c, const char *token, const char *source)
{
    assert_string_equal(open_session(c, token), source);
}

/* A session whose channels must come from source, closed at once. */
static void expect_load(const char *token, const char *source)
{
    ws_client c;
    open_from(&c, token, source);
    ws_close(&c);
}

static void post(const char *token, long long ws, long long ch, const char *text)
{
    api_must_drop(S.port, 201, "POST", api_p("/workspaces/%lld/channels/%lld/messages", ws, ch),
                  token, json_pack("{s:s}", "text", text));
}

/* Reads frames until the message with this text; fails on any frame of channel
 * forbidden (0: none) before it, or when it does not come within timeout_ms. */
static bool await_text(ws_client *c, const char *text, long long forbidden, int timeout_ms)
{
    for (int64_t end = test_now_ms() + timeout_ms; test_now_ms() < end;) {
        json_t *j = next_json(c, (int)(end - test_now_ms()));
        if (!j)
            return false;
        if (forbidden && json_integer_value(json_object_get(j, "ch")) == forbidden)
            fail_msg("an event of channel %lld reached the session", forbidden);
        const char *got = json_string_value(json_object_get(json_object_get(j, "d"), "text"));
        bool found = got && strcmp(got, text) == 0;
        json_decref(j);
        if (found)
            return true;
    }
    return false;
}

/* The session gets channel ch's messages: probes are posted (by poster, a member) until
 * one arrives, as the node's stream subscription may start just after the load. */
static void expect_delivered(ws_client *c, const char *poster, long long ws, long long ch)
{
    for (int i = 0; i < 20; i++) {
        const char *probe = api_p("probe %lld %d", ch, i);
        char text[64];
        snprintf(text, sizeof text, "%s", probe);
        post(poster, ws, ch, text);
        if (await_text(c, text, 0, 500))
            return;
    }
    fail_msg("no message of channel %lld reached the session", ch);
}

/* The session does not get channel absent's messages: one is posted there, then one to
 * present (which the session gets); on the single stream the first comes first. */
static void expect_not_delivered(ws_client *c, const char *poster, long long ws,
                                 long long absent, long long present)
{
    post(poster, ws, absent, "must not arrive");
    post(poster, ws, present, "after it");
    if (!await_text(c, "after it", absent, 10000))
        fail_msg("the message of channel %lld did not arrive", present);
}

/* ---- fixtures ------------------------------------------------------------------------ */

typedef struct team {
    char *owner, *member; /* tokens: the owner of the workspace, and a plain member */
    long long owner_id, member_id, ws;
} team;

static void team_new(team *t, const char *tag)
{
    t->owner = api_new_user(S.port, api_p("%s-owner", tag), &t->owner_id);
    t->member = api_new_user(S.port, api_p("%s-member", tag), &t->member_id);
    json_t *w = api_must(S.port, 201, "POST", "/workspaces", t->owner,
                         json_pack("{s:s,s:s}", "name", tag, "slug", tag));
    t->ws = api_int(w, "id");
    json_decref(w);
    api_must_drop(S.port, 201, "POST", api_p("/workspaces/%lld/members", t->ws), t->owner,
                  json_pack("{s:I}", "user_id", (json_int_t)t->member_id));
}

static void team_free(team *t)
{
    free(t->owner);
    free(t->member);
}

/* The member joins channel ch over REST. */
static void channel_join(const team *t, long long ch)
{
    api_must_drop(S.port, 200, "POST", api_p("/workspaces/%lld/channels/%lld/join", t->ws, ch),
                  t->member, NULL);
}

/* A channel of the owner's; the member joins it when join is true. */
static long long channel_new(const team *t, const char *name, bool join)
{
    json_t *c = api_must(S.port, 201, "POST", api_p("/workspaces/%lld/channels", t->ws),
                         t->owner, json_pack("{s:s}", "name", name));
    long long ch = api_int(c, "id");
    json_decref(c);
    if (join)
        channel_join(t, ch);
    return ch;
}

/* The member's sessions load from the cache from now on: the first one may still be
 * a Postgres load, which fills it. */
static void warm_cache(const team *t)
{
    await_outbox_drained();
    ws_client c;
    open_session(&c, t->member);
    ws_close(&c);
    expect_load(t->member, "cache");
}

/* A session of the member whose channels come from source, that gets channel
 * present's messages and (absent not 0) not absent's. */
static void expect_session(const team *t, const char *source, long long present,
                           long long absent)
{
    ws_client c;
    open_from(&c, t->member, source);
    expect_delivered(&c, t->owner, t->ws, present);
    if (absent)
        expect_not_delivered(&c, t->owner, t->ws, absent, present);
    ws_close(&c);
}

/* ---- tests -------------------------------------------------------------------------- */

/* The first session of a user loads from Postgres and stores "<version>|<channels>"
 * under the user's version; the next one is answered by the cache and gets the same
 * channel's messages. A user without channels is a cache hit too. */
static void test_postgres_then_cache(void **state)
{
    (void)state;
    team t;
    team_new(&t, "mem-first");
    long long ch = channel_new(&t, "general", true);
    await_outbox_drained();
    ws_client c;
    open_from(&c, t.member, "postgres");
    expect_cached(t.member_id, api_p("%lld", ch));
    expect_delivered(&c, t.owner, t.ws, ch);
    ws_close(&c);
    expect_session(&t, "cache", ch, 0);

    long long lonely;
    char *tl = api_new_user(S.port, "mem-lonely", &lonely);
    expect_load(tl, "postgres");
    expect_cached(lonely, "");
    expect_load(tl, "cache");
    free(tl);
    team_free(&t);
}

/* Joining a channel over REST bumps the member's version (a message does not): the
 * next session loads from Postgres and gets the new channel's messages. */
static void test_join_bumps_version(void **state)
{
    (void)state;
    team t;
    team_new(&t, "mem-join");
    long long old = channel_new(&t, "old", true);
    long long fresh = channel_new(&t, "fresh", false);
    warm_cache(&t);
    long long v0 = version(t.member_id);

    channel_join(&t, fresh);
    await_outbox_drained();
    long long v1 = version(t.member_id);
    assert_true(v1 > v0);
    redisReply *ttl = redisCommand(rc, "TTL chorus:memv:%lld", t.member_id);
    assert_true(ttl->integer > 86000 && ttl->integer <= 86400);
    freeReplyObject(ttl);

    ws_client c;
    open_from(&c, t.member, "postgres");
    expect_delivered(&c, t.owner, t.ws, fresh);
    expect_delivered(&c, t.owner, t.ws, old);
    await_outbox_drained();
    assert_true(version(t.member_id) == v1); /* the messages bumped nothing */
    ws_close(&c);
    expect_session(&t, "cache", fresh, 0);
    team_free(&t);
}

/* Leaving a channel (DELETE member) bumps the version: the next session loads from
 * Postgres and no longer gets that channel's messages. */
static void test_leave_bumps_version(void **state)
{
    (void)state;
    team t;
    team_new(&t, "mem-leave");
    long long keep = channel_new(&t, "keep", true);
    long long gone = channel_new(&t, "gone", true);
    warm_cache(&t);
    long long v0 = version(t.member_id);
    api_must_drop(S.port, 204, "DELETE",
                  api_p("/workspaces/%lld/channels/%lld/members/%lld", t.ws, gone, t.member_id),
                  t.member, NULL);
    await_outbox_drained();
    assert_true(version(t.member_id) > v0);
    expect_session(&t, "postgres", keep, gone);
    team_free(&t);
}

/* A list stored under the current version is trusted (a hand-written one, naming a
 * channel the user is not in, is what the session gets); the same list once the
 * version has moved on is ignored, and Postgres answers. */
static void test_stale_list_is_ignored(void **state)
{
    (void)state;
    team t;
    team_new(&t, "mem-stale");
    long long mine = channel_new(&t, "mine", true);
    long long other = channel_new(&t, "other", false);
    warm_cache(&t);
    const char *key = api_p("chorus:members:%lld", t.member_id);
    char k[64], forged[64];
    snprintf(k, sizeof k, "%s", key);
    snprintf(forged, sizeof forged, "%lld|%lld", version(t.member_id), other);
    rcommand("SET", k, forged);
    expect_session(&t, "cache", other, 0);

    rcommand("SET", k, forged);
    rcommand("INCR", api_p("chorus:memv:%lld", t.member_id), NULL);
    expect_session(&t, "postgres", mine, other);
    team_free(&t);
}

/* A version key that is gone (expired; deleted here) starts again from the server's
 * clock, never from 1: a list tagged with a small version the key had before (set here
 * as a plain INCR from nothing would have made it) cannot match again. */
static void test_version_never_repeats(void **state)
{
    (void)state;
    team t;
    team_new(&t, "mem-expiry");
    channel_new(&t, "first", true);
    long long second = channel_new(&t, "second", false);
    await_outbox_drained();
    char vkey[64];
    snprintf(vkey, sizeof vkey, "chorus:memv:%lld", t.member_id);
    rcommand("SET", vkey, "1");
    expect_load(t.member, "postgres"); /* stored under "1" */
    char *cached = rget("chorus:members:%lld", t.member_id);
    assert_true(cached && strncmp(cached, "1|", 2) == 0);
    free(cached);
    rcommand("DEL", vkey, NULL);
    channel_join(&t, second);
    await_outbox_drained();
    assert_true(version(t.member_id) > 1);
    expect_session(&t, "postgres", second, 0);
    team_free(&t);
}

/* A version bump that lands while the Postgres query runs (held here by a table lock)
 * makes the node drop what the query returned instead of caching it. hello waits for
 * the list: nothing reaches the session while the query is held. */
static void test_fill_refused_when_version_moves(void **state)
{
    (void)state;
    team t;
    team_new(&t, "mem-race");
    channel_new(&t, "raced", true);
    await_outbox_drained();
    char key[64];
    snprintf(key, sizeof key, "chorus:members:%lld", t.member_id);
    rcommand("DEL", key, NULL);
    PQclear(api_db_query(S.pg, "BEGIN", NULL));
    PQclear(api_db_query(S.pg, "LOCK TABLE channel_members IN ACCESS EXCLUSIVE MODE", NULL));
    double pg0 = loads("postgres");
    ws_client c;
    assert_int_equal(ws_connect(&c, wss_port, api_p("/ws?token=%s", t.member), NULL, NULL), 101);
    /* no hello yet: it follows the channel list, which waits for the lock */
    await_query_on_lock();
    if (next_json(&c, 300)) /* hello means subscribed: not while the list is unread */
        fail_msg("a frame came before the session's channel list was read");
    rcommand("INCR", api_p("chorus:memv:%lld", t.member_id), NULL); /* a bump meanwhile */
    PQclear(api_db_query(S.pg, "COMMIT", NULL));
    for (int64_t end = test_now_ms() + 5000; loads("postgres") < pg0 + 1; usleep(10000))
        if (test_now_ms() > end)
            fail_msg("the load did not finish after the lock");
    expect_t(&c, "hello");
    usleep(200 * 1000); /* the fill, if any, follows the load at once */
    char *cached = rget("chorus:members:%lld", t.member_id);
    if (cached)
        fail_msg("a list read before the bump was cached: %s", cached);
    ws_close(&c);
    expect_load(t.member, "postgres");
    expect_load(t.member, "cache");
    team_free(&t);
}

/* The worker bumps every user whose channel list an event changes: the members of a
 * deleted channel, a user who leaves the workspace; joining a workspace (no channel)
 * bumps nobody. The next list of each leaves out what they lost. */
static void test_worker_bumps(void **state)
{
    (void)state;
    team t;
    team_new(&t, "mem-bumps");
    long long stay = channel_new(&t, "stay", true);
    long long doomed = channel_new(&t, "doomed", true);
    long long newbie;
    char *tn = api_new_user(S.port, "mem-newbie", &newbie);
    await_outbox_drained();
    long long vo = version(t.owner_id), vm = version(t.member_id);
    api_must_drop(S.port, 201, "POST", api_p("/workspaces/%lld/members", t.ws), t.owner,
                  json_pack("{s:I}", "user_id", (json_int_t)newbie));
    api_must_drop(S.port, 204, "DELETE", api_p("/workspaces/%lld/channels/%lld", t.ws, doomed),
                  t.owner, NULL);
    await_outbox_drained();
    assert_true(version(t.owner_id) > vo);
    assert_true(version(t.member_id) > vm);
    assert_int_equal(version(newbie), 0);
    expect_load(t.member, "postgres");
    expect_cached(t.member_id, api_p("%lld", stay));

    vm = version(t.member_id);
    api_must_drop(S.port, 204, "DELETE",
                  api_p("/workspaces/%lld/members/%lld", t.ws, t.member_id), t.member, NULL);
    await_outbox_drained();
    assert_true(version(t.member_id) > vm);
    expect_load(t.member, "postgres");
    expect_cached(t.member_id, "");
    free(tn);
    team_free(&t);
}

/* Stops the test's Redis and waits until the node has noticed. */
static void redis_down(void)
{
    redisFree(rc);
    rc = NULL;
    test_redis_stop(&R);
    for (int64_t end = test_now_ms() + 5000; metric(REDIS_UP) != 0; usleep(20000))
        if (test_now_ms() > end)
            fail_msg("the node did not notice Redis stopped");
}

/* Starts it again (empty) and waits until the node is connected. */
static void redis_up(void)
{
    test_redis_start(&R);
    rc = test_redis_connect(&R);
    for (int64_t end = test_now_ms() + 10000; metric(REDIS_UP) != 1; usleep(20000))
        if (test_now_ms() > end)
            fail_msg("the node did not reconnect to Redis within 10 s");
}

/* The sessions of earlier tests are gone from the node (a close takes a moment). */
static void await_no_partition(void)
{
    for (int64_t end = test_now_ms() + 5000; metric("chorus_wss_channel_partitions") != 0;
         usleep(20000))
        if (test_now_ms() > end)
            fail_msg("a session of an earlier test still holds the partition (%.0f sessions)",
                     metric("chorus_wss_connections"));
}

/* With Redis stopped, sessions still get their channels, from Postgres; once it is
 * back (empty) the cache fills again and delivery resumes. */
static void test_redis_down_falls_back(void **state)
{
    (void)state;
    team t;
    team_new(&t, "mem-down");
    long long ch = channel_new(&t, "resilient", true);
    warm_cache(&t);
    redis_down();
    double errors0 = metric("chorus_wss_membership_errors_total{kind=\"redis\"}");
    ws_client c;
    open_from(&c, t.member, "postgres");
    assert_true(metric("chorus_wss_membership_errors_total{kind=\"redis\"}") > errors0);
    ws_close(&c);

    redis_up();
    expect_load(t.member, "postgres");
    expect_session(&t, "cache", ch, 0);
    team_free(&t);
}

/* A session that opens while Redis is down is the first of its partition here, and its
 * subscription fails then. Once Redis is back the node subscribes the partition again by
 * itself. The session was greeted, has no position in the channel and may have missed
 * events (one is posted meanwhile): it is closed with 1013 rather than left to get the
 * next event past a gap, and once reconnected it gets the channel's events. */
static void test_partition_repaired_after_outage(void **state)
{
    (void)state;
    team t;
    team_new(&t, "mem-repair");
    long long ch = channel_new(&t, "repaired", true);
    await_outbox_drained();
    await_no_partition();
    redis_down();
    double repairs0 = metric("chorus_wss_partition_repairs_total");
    ws_client c;
    open_from(&c, t.member, "postgres");
    post(t.owner, t.ws, ch, "while down");
    redis_up();
    for (int64_t end = test_now_ms() + 15000;
         metric("chorus_wss_partition_repairs_total") <= repairs0; usleep(50000))
        if (test_now_ms() > end)
            fail_msg("the partition was not subscribed again within 15 s of Redis' return");
    wst_expect_close(&c, 1013, 5000);
    ws_close(&c);
    open_session(&c, t.member);
    expect_delivered(&c, t.owner, t.ws, ch);
    ws_close(&c);
    team_free(&t);
}

/* A session's frames up to the message with this text: every message on the way must
 * be of channel ch. */
static void expect_own_text(ws_client *c, long long ch, const char *text)
{
    for (int64_t end = test_now_ms() + 10000; test_now_ms() < end;) {
        json_t *j = next_json(c, (int)(end - test_now_ms()));
        if (!j)
            break;
        json_t *d = json_object_get(j, "d");
        const char *got = json_string_value(json_object_get(d, "text"));
        if (got && json_integer_value(json_object_get(j, "ch")) != ch)
            fail_msg("a session of channel %lld got \"%s\" of channel %lld", ch, got,
                     (long long)json_integer_value(json_object_get(j, "ch")));
        bool found = got && strcmp(got, text) == 0;
        json_decref(j);
        if (found)
            return;
    }
    fail_msg("\"%s\" did not reach the session of channel %lld", text, ch);
}

/* While the channel queries in flight wait (held here by a table lock), new sessions'
 * loads gather instead of each sending one more query: at most two are out, and the
 * rest go out in batches of 128 once one answers (300 sessions: two full batches wait
 * in line, a third fills). Every session then gets its hello. (One query per session
 * filled the pool's queue of a new replica in the 100k load test.) */
static void test_loads_gather_while_queries_wait(void **state)
{
    (void)state;
    team t;
    team_new(&t, "mem-gather");
    long long ch = channel_new(&t, "gathered", true);
    await_outbox_drained();
    rcommand("DEL", api_p("chorus:members:%lld", t.member_id), NULL);
    enum { N = 300, BATCH = 128 };
    static ws_client c[N];
    double q0 = metric("chorus_wss_membership_queries_total"), pg0 = loads("postgres");
    PQclear(api_db_query(S.pg, "BEGIN", NULL));
    PQclear(api_db_query(S.pg, "LOCK TABLE channel_members IN ACCESS EXCLUSIVE MODE", NULL));
    for (int i = 0; i < N; i++) /* one at a time: a loop iteration of the node each */
        assert_int_equal(ws_connect(&c[i], wss_port, api_p("/ws?token=%s", t.member),
                                    "chorus.json", NULL), 101);
    await_query_on_lock();
    usleep(200 * 1000); /* time for more queries, were they sent */
    double held = metric("chorus_wss_membership_queries_total") - q0;
    print_message("%d sessions waiting: %.0f channel queries sent\n", N, held);
    assert_true(held >= 1 && held <= 2);
    PQclear(api_db_query(S.pg, "COMMIT", NULL));
    for (int i = 0; i < N; i++)
        expect_t(&c[i], "hello");
    double queries = metric("chorus_wss_membership_queries_total") - q0;
    print_message("then %.0f queries in all for %.0f loads\n", queries, loads("postgres") - pg0);
    assert_true(queries <= 2 + (N - 2 + BATCH - 1) / BATCH);
    assert_true(loads("postgres") - pg0 == N);
    expect_delivered(&c[N - 1], t.owner, t.ws, ch);
    for (int i = 0; i < N; i++)
        ws_close(&c[i]);
    team_free(&t);
}

#define BATCH_USERS 8

/* Upgrades that reach the node together have their cache misses answered by one query
 * (a few at most): fewer queries than loads. Each session still gets exactly its own
 * user's channels: users of one channel each, one of them with two sessions, one with
 * no channel at all. */
static void test_loads_batched(void **state)
{
    (void)state;
    team t;
    team_new(&t, "mem-batch");
    char *tok[BATCH_USERS + 1];
    long long ch[BATCH_USERS];
    for (int i = 0; i < BATCH_USERS; i++) {
        long long uid;
        tok[i] = api_new_user(S.port, api_p("mem-batch-%d", i), &uid);
        api_must_drop(S.port, 201, "POST", api_p("/workspaces/%lld/members", t.ws), t.owner,
                      json_pack("{s:I}", "user_id", (json_int_t)uid));
        ch[i] = channel_new(&t, api_p("batch-%d", i), false);
        api_must_drop(S.port, 200, "POST",
                      api_p("/workspaces/%lld/channels/%lld/join", t.ws, ch[i]), tok[i], NULL);
    }
    long long lonely;
    tok[BATCH_USERS] = api_new_user(S.port, "mem-batch-lonely", &lonely);
    await_outbox_drained();

    enum { N = BATCH_USERS + 2 }; /* every user, user 0 twice, the lonely one */
    ws_client c[N];
    double q0 = metric("chorus_wss_membership_queries_total"), pg0 = loads("postgres");
    double cache0 = loads("cache");
    /* The upgrades must arrive together: sent while the server is stopped, they wait in
     * its socket backlog, rather than trickle in one loop iteration each when the
     * machine is busy (the sanitizer build, other tests beside: 9 loads in 9 queries). */
    kill(S.proc.pid, SIGSTOP);
    for (int i = 0; i < N; i++)
        assert_int_equal(ws_connect_start(&c[i], wss_port,
                                          api_p("/ws?token=%s", tok[i < BATCH_USERS ? i
                                                               : i == N - 1 ? BATCH_USERS : 0]),
                                          "chorus.json", NULL), 0);
    kill(S.proc.pid, SIGCONT);
    for (int i = 0; i < N; i++) {
        assert_int_equal(ws_connect_finish(&c[i]), 101);
        expect_t(&c[i], "hello");
    }
    /* every hello came, so every list is loaded; user 0's second session may find the
     * list its first one cached, when the two fall in different batches */
    double from_pg = loads("postgres") - pg0, from_cache = loads("cache") - cache0;
    assert_int_equal(from_pg + from_cache, N);
    assert_true(from_cache <= 1);
    double queries = metric("chorus_wss_membership_queries_total") - q0;
    print_message("%.0f loads from Postgres in %.0f queries\n", from_pg, queries);
    assert_true(queries >= 1 && queries < from_pg);

    for (int i = 0; i < N; i++) {
        assert_int_equal(ws_send_text(&c[i], "{\"op\":\"ping\"}"), 0);
        expect_t(&c[i], "pong");
    }
    /* Two rounds: session i's second message comes after every other channel's first. */
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < BATCH_USERS; i++)
            post(t.owner, t.ws, ch[i], api_p("batch %d round %d", i, round));
    for (int i = 0; i < N - 1; i++)
        for (int round = 0; round < 2; round++)
            expect_own_text(&c[i], ch[i < BATCH_USERS ? i : 0],
                            api_p("batch %d round %d", i < BATCH_USERS ? i : 0, round));
    assert_int_equal(ws_send_text(&c[N - 1], "{\"op\":\"ping\"}"), 0);
    expect_t(&c[N - 1], "pong"); /* and nothing before it: the lonely user has no channel */
    for (int i = 0; i < N; i++)
        ws_close(&c[i]);
    for (int i = 0; i <= BATCH_USERS; i++)
        free(tok[i]);
    team_free(&t);
}

/* The same outage, but the session resumed (it had the channel's last seq) before Redis
 * came back, and a message was posted meanwhile: the partition's stream starts after it
 * once subscribed again, so the catch-up from the session's position must bring it. */
static void test_repair_catches_up_the_outage(void **state)
{
    (void)state;
    team t;
    team_new(&t, "mem-catch");
    long long ch = channel_new(&t, "caught", true);
    await_outbox_drained();
    await_no_partition();
    long long seen = api_db_int(S.pg, api_p("SELECT last_seq FROM channels WHERE id = %lld", ch),
                                NULL);
    redis_down();
    ws_client c;
    open_from(&c, t.member, "postgres");
    char op[128];
    snprintf(op, sizeof op, "{\"op\":\"resume\",\"positions\":{\"%lld\":%lld}}", ch, seen);
    assert_int_equal(ws_send_text(&c, op), 0);
    expect_t(&c, "resumed");
    post(t.owner, t.ws, ch, "while down");
    redis_up();
    if (!await_text(&c, "while down", 0, 15000))
        fail_msg("the message posted during the outage never reached the session");
    post(t.owner, t.ws, ch, "after");
    if (!await_text(&c, "after", 0, 5000))
        fail_msg("the message posted after the outage never reached the session");
    ws_close(&c);
    team_free(&t);
}

/* The partition is repaired while a member's resume from 0 is still out (its query
 * held here by a lock): the member has no position yet, but the answer may predate what
 * the partition missed, so it must catch up once the resume ends. It used to be neither
 * caught up nor closed: in two 100k load runs such sessions got "seq 10 where 9 was
 * due". The catch-up shows as a second resume query, after the resume's. */
static void test_repair_catches_up_a_resuming_member(void **state)
{
    (void)state;
    team t;
    team_new(&t, "mem-resuming");
    long long ch = channel_new(&t, "resuming", true);
    post(t.owner, t.ws, ch, "before");
    await_outbox_drained();
    await_no_partition();
    redis_down();
    ws_client c;
    open_from(&c, t.member, "postgres");
    PQclear(api_db_query(S.pg, "BEGIN", NULL));
    PQclear(api_db_query(S.pg, "LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE", NULL));
    double q0 = metric("chorus_wss_resume_queries_total");
    char op[128];
    snprintf(op, sizeof op, "{\"op\":\"resume\",\"positions\":{\"%lld\":0}}", ch);
    assert_int_equal(ws_send_text(&c, op), 0);
    await_query_on_lock();
    double repairs0 = metric("chorus_wss_partition_repairs_total");
    redis_up();
    for (int64_t end = test_now_ms() + 15000;
         metric("chorus_wss_partition_repairs_total") <= repairs0; usleep(50000))
        if (test_now_ms() > end)
            fail_msg("the partition was not subscribed again within 15 s of Redis' return");
    PQclear(api_db_query(S.pg, "COMMIT", NULL));
    if (!await_text(&c, "before", 0, 5000))
        fail_msg("the resume did not bring the channel's message");
    for (int64_t end = test_now_ms() + 5000;
         metric("chorus_wss_resume_queries_total") < q0 + 2; usleep(50000))
        if (test_now_ms() > end)
            fail_msg("%.0f resume queries: the member resuming during the repair was not "
                     "caught up after its resume",
                     metric("chorus_wss_resume_queries_total") - q0);
    post(t.owner, t.ws, ch, "after");
    if (!await_text(&c, "after", 0, 5000))
        fail_msg("the message posted after the repair never reached the session");
    ws_close(&c);
    team_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_postgres_then_cache),
        cmocka_unit_test(test_join_bumps_version),
        cmocka_unit_test(test_leave_bumps_version),
        cmocka_unit_test(test_stale_list_is_ignored),
        cmocka_unit_test(test_version_never_repeats),
        cmocka_unit_test(test_fill_refused_when_version_moves),
        cmocka_unit_test(test_worker_bumps),
        cmocka_unit_test(test_redis_down_falls_back),
        cmocka_unit_test(test_partition_repaired_after_outage),
        cmocka_unit_test(test_repair_catches_up_the_outage),
        cmocka_unit_test(test_repair_catches_up_a_resuming_member),
        cmocka_unit_test(test_loads_batched),
        cmocka_unit_test(test_loads_gather_while_queries_wait),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
