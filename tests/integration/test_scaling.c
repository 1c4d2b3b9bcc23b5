/* test_scaling.c - WSS replicas that follow the connection count (issue 6):
 * `chorus run --roles gateway,outbox,scaler` with a capacity of 200 sessions per node
 * starts with one replica; 1,000 clients connect through POST /realtime/connect; the
 * scaler adds replicas by itself, no node ever holds more than its capacity, and once
 * the ramp is done the nodes' loads are within 10 % of each other (the scaler has the
 * fullest shed their excess, whose clients reconnect through the gateway). Then the
 * clients leave and the extra replicas are retired. A replica that goes silent for a
 * few seconds is not replaced at once. */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "api.h"
#include "wstest.h"

enum { CLIENTS = 1000, CAPACITY = 200 };
/* Sessions a second the scaler may move to even the load; it decides every 3 s. */
#define REBALANCE_PER_S "20"

static api_server S;
static ws_client clients[CLIENTS];
static char *tokens[CLIENTS];

static int group_setup(void **state)
{
    (void)state;
    api_db_create(&S, "scaling");
    static char env_port[64];
    snprintf(env_port, sizeof env_port, "CHORUS_WSS_PORT=%d", test_free_port());
    /* The test's clients never ping: a long heartbeat keeps the idle timeout (two
     * heartbeats) out of a run that lasts over a minute under the sanitizers. */
    const char *env[] = {env_port, "CHORUS_NODE_ID=scale",
                         "CHORUS_MAX_CONNECTIONS=200", "CHORUS_WSS_REPLICAS_MAX=10",
                         "CHORUS_SCALE_DOWN_AFTER_S=3", "CHORUS_WSS_HEARTBEAT_MS=600000",
                         "CHORUS_REBALANCE_PER_S=" REBALANCE_PER_S, NULL};
    api_server_start_roles(&S, "gateway,outbox,scaler", env);
    for (int i = 0; i < CLIENTS; i++)
        tokens[i] = api_jwt_hs256(API_JWT_SECRET, api_p("%d", 1000000 + i), 0, 3600);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    api_server_stop(&S);
    api_db_drop(&S);
    for (int i = 0; i < CLIENTS; i++)
        free(tokens[i]);
    return 0;
}

typedef struct view {
    int nodes;
    long conns[64], caps[64];
} view;

/* The live nodes of the registry, as the scaler sees them. */
static view registry(redisContext *rc)
{
    view v = {0};
    redisReply *ids = redisCommand(rc, "ZRANGE chorus:wss:nodes 0 -1");
    for (size_t i = 0; ids && i < ids->elements && v.nodes < 64; i++) {
        redisReply *h = redisCommand(rc, "HMGET chorus:wss:node:%s connections capacity draining",
                                     ids->element[i]->str);
        if (h && h->element[0]->type == REDIS_REPLY_STRING &&
            strcmp(h->element[2]->str, "1") != 0) {
            v.conns[v.nodes] = atol(h->element[0]->str);
            v.caps[v.nodes++] = atol(h->element[1]->str);
        }
        freeReplyObject(h);
    }
    freeReplyObject(ids);
    return v;
}

/* Connects client i through the gateway; false when no node had room (503) or the
 * node turned it away (4009): try again later. */
static bool connect_one(int i)
{
    test_http_resp resp;
    char auth[1200];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", tokens[i]);
    if (test_http(S.port, "POST", "/api/v1/realtime/connect", auth, NULL, 0, &resp) != 0)
        fail_msg("the gateway did not answer");
    if (resp.status == 503) {
        test_http_free(&resp);
        return false;
    }
    assert_int_equal(resp.status, 200);
    json_t *j = json_loads(resp.body, 0, NULL);
    test_http_free(&resp);
    int port = 0;
    assert_int_equal(sscanf(api_str(j, "url"), "ws://127.0.0.1:%d/ws", &port), 1);
    int st = ws_connect(&clients[i], port, api_p("/ws?token=%s", api_str(j, "token")),
                        "chorus.json", NULL);
    json_decref(j);
    if (st != 101)
        return false;
    ws_frame f; /* hello, or 4009 from a node that filled up meanwhile */
    bool ok = ws_recv(&clients[i], &f, 5000) == 0 && f.opcode == 1 &&
              strstr(f.data, "\"hello\"") != NULL;
    if (!ok && f.opcode == 8 && f.close_code != 4009)
        fail_msg("a node closed a new session with %d", f.close_code);
    ws_frame_free(&f);
    if (!ok)
        ws_close(&clients[i]);
    return ok;
}

/* Clients whose node closed them (4009: full or shedding) reconnect; returns how many. */
static int reconnect_closed(void)
{
    int moved = 0;
    for (int i = 0; i < CLIENTS; i++) {
        struct pollfd p = {clients[i].fd, POLLIN, 0};
        if (clients[i].fd < 0 || poll(&p, 1, 0) != 1)
            continue;
        ws_frame f;
        if (ws_recv(&clients[i], &f, 100) == 0 && f.opcode != 8) {
            ws_frame_free(&f);
            continue; /* presence and the like: still connected */
        }
        if (f.opcode == 8)
            assert_int_equal(f.close_code, 4009);
        ws_frame_free(&f);
        ws_close(&clients[i]);
        while (!connect_one(i))
            usleep(100 * 1000);
        moved++;
    }
    return moved;
}

static void assert_within_capacity(redisContext *rc)
{
    view v = registry(rc);
    for (int k = 0; k < v.nodes; k++)
        if (v.conns[k] > v.caps[k])
            fail_msg("a node holds %ld sessions, over its capacity %ld", v.conns[k], v.caps[k]);
}

static void test_ramp_adds_replicas_and_spreads(void **state)
{
    (void)state;
    redisContext *rc = wst_redis(S.redis_url);
    int64_t t0 = test_now_ms();
    for (int i = 0; i < CLIENTS; i++) {
        while (!connect_one(i)) {
            if (test_now_ms() - t0 > 120000)
                fail_msg("client %d could not connect within 120 s", i);
            usleep(100 * 1000);
        }
        if (i % 100 == 99)
            assert_within_capacity(rc);
    }
    print_message("1000 clients connected in %lld ms\n", (long long)(test_now_ms() - t0));

    /* let the scaler even the load: quiet for 5 s and within 10 % of the average; one
     * round (3 s) moves at most 3 x REBALANCE_PER_S sessions, plus one a node for the
     * rounding of their shares */
    view v;
    double spread = 1;
    int64_t quiet_since = test_now_ms();
    double shed_before = test_metric(S.port, "chorus_scaler_shed_sessions_total");
    int64_t shed_at = 0;
    for (int64_t end = test_now_ms() + 60000;; usleep(200 * 1000)) {
        if (reconnect_closed() > 0)
            quiet_since = test_now_ms();
        double shed = test_metric(S.port, "chorus_scaler_shed_sessions_total");
        if (shed > shed_before) {
            int64_t now = test_now_ms();
            print_message("scaler moved %.0f sessions (%lld ms after the last round)\n",
                          shed - shed_before, shed_at ? (long long)(now - shed_at) : 0LL);
            if (shed - shed_before > 3 * atoi(REBALANCE_PER_S) + CLIENTS / CAPACITY + 5)
                fail_msg("one round moved %.0f sessions", shed - shed_before);
            shed_before = shed;
            shed_at = now;
        }
        assert_within_capacity(rc);
        v = registry(rc);
        long total = 0, lo = 1 << 30, hi = 0;
        for (int k = 0; k < v.nodes; k++) {
            total += v.conns[k];
            lo = v.conns[k] < lo ? v.conns[k] : lo;
            hi = v.conns[k] > hi ? v.conns[k] : hi;
        }
        double avg = v.nodes ? (double)total / v.nodes : 0;
        spread = avg > 0 ? (double)(hi - lo) / avg : 1;
        if (total == CLIENTS && hi <= avg * 1.1 && lo >= avg * 0.9 &&
            test_now_ms() - quiet_since > 5000)
            break;
        if (test_now_ms() > end)
            fail_msg("not even after 60 s: %d nodes, %ld..%ld sessions, %ld in all", v.nodes,
                     lo, hi, total);
    }
    print_message("%d replicas; sessions per node:", v.nodes);
    for (int k = 0; k < v.nodes; k++)
        print_message(" %ld", v.conns[k]);
    print_message(" (spread %.1f %% of the average)\n", spread * 100);
    assert_true(v.nodes >= CLIENTS / CAPACITY);
    assert_true(test_metric(S.port, "chorus_scaler_decisions_total{action=\"up\"}") >=
                v.nodes - 1);

    /* everyone leaves: the scaler retires the replicas it added, down to one */
    for (int i = 0; i < CLIENTS; i++)
        ws_close(&clients[i]);
    for (int64_t end = test_now_ms() + 60000; registry(rc).nodes > 1; usleep(200 * 1000))
        if (test_now_ms() > end)
            fail_msg("still %d replicas 60 s after the clients left", registry(rc).nodes);
    assert_true(test_metric(S.port, "chorus_scaler_decisions_total{action=\"down\"}") >=
                v.nodes - 1);
    redisFree(rc);
}

/* ---- traffic across failures ----------------------------------------------------- */

enum { MEMBERS = 300, POSTS = 600 };

typedef struct member {
    ws_client c;
    bool up;
    bool gone;         /* left for good */
    long long next;    /* the seq of the channel this client must get next */
    char *token;
} member;

static member members[MEMBERS];
static long long chan, chan_ws;
static char *poster;
static int reconnects, lost, out_of_order;

/* A poster's workspace and channel, and MEMBERS users in it (inserted directly: 300
 * scrypt signups would take half a minute). */
static void traffic_setup(void)
{
    long long uid;
    poster = api_new_user(S.port, "scale-poster", &uid);
    json_t *w = api_must(S.port, 201, "POST", "/workspaces", poster,
                         json_pack("{s:s,s:s}", "name", "Scale", "slug", "scale"));
    chan_ws = api_int(w, "id");
    json_decref(w);
    json_t *c = api_must(S.port, 201, "POST", api_p("/workspaces/%lld/channels", chan_ws),
                         poster, json_pack("{s:s}", "name", "busy"));
    chan = api_int(c, "id");
    json_decref(c);
    char sql[1024];
    snprintf(sql, sizeof sql,
             "WITH u AS (INSERT INTO users (email, name, password_hash)"
             "  SELECT 'scale' || i || '@t.test', 'scale ' || i, 'x'"
             "  FROM generate_series(1, %d) i RETURNING id),"
             " wm AS (INSERT INTO workspace_members (workspace_id, user_id, role)"
             "  SELECT %lld, id, 'member' FROM u RETURNING user_id)"
             " INSERT INTO channel_members (channel_id, user_id, workspace_id, last_read_seq)"
             "  SELECT %lld, user_id, %lld, 0 FROM wm RETURNING user_id",
             MEMBERS, chan_ws, chan, chan_ws);
    PGresult *r = api_db_query(S.pg, sql, NULL);
    assert_int_equal(PQntuples(r), MEMBERS);
    long long next = api_db_int(S.pg, api_p("SELECT last_seq + 1 FROM channels WHERE id = %lld",
                                            chan), NULL);
    for (int i = 0; i < MEMBERS; i++) {
        members[i].token = api_jwt_hs256(API_JWT_SECRET, PQgetvalue(r, i, 0), 0, 3600);
        members[i].next = next;
    }
    PQclear(r);
}

/* Connects member i through the gateway and resumes from what it has; false to retry. */
static bool member_connect(member *m)
{
    test_http_resp resp;
    char auth[1200];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", m->token);
    if (test_http(S.port, "POST", "/api/v1/realtime/connect", auth, NULL, 0, &resp) != 0 ||
        resp.status != 200) {
        test_http_free(&resp);
        return false;
    }
    json_t *j = json_loads(resp.body, 0, NULL);
    test_http_free(&resp);
    int port = 0;
    sscanf(api_str(j, "url"), "ws://127.0.0.1:%d/ws", &port);
    int st = ws_connect(&m->c, port, api_p("/ws?token=%s", api_str(j, "token")), "chorus.json",
                        NULL);
    json_decref(j);
    if (st != 101)
        return false; /* a node that just died, still in the registry for 3 s */
    char op[128];
    snprintf(op, sizeof op, "{\"op\":\"resume\",\"positions\":{\"%lld\":%lld}}", chan,
             m->next - 1);
    m->up = ws_send_text(&m->c, op) == 0;
    if (!m->up)
        ws_close(&m->c);
    return m->up;
}

static void member_down(member *m)
{
    ws_close(&m->c);
    m->up = false;
}

/* One frame of member m: a message must be the next seq (a repeat or a gap is counted). */
static void member_frame(member *m, const ws_frame *f)
{
    if (f->opcode != 1 || !strstr(f->data, "\"message.created\""))
        return;
    json_t *j = json_loads(f->data, 0, NULL);
    long long seq = api_int(j, "seq");
    json_decref(j);
    if (seq == m->next) {
        m->next++;
        return;
    }
    if (seq < m->next)
        out_of_order++; /* a repeat, or one that came after a later one */
    else
        lost += (int)(seq - m->next);
    m->next = seq > m->next ? seq + 1 : m->next;
}

/* Reads whatever the members have (waiting at most ms), reconnecting the closed ones. */
static void pump(int ms)
{
    struct pollfd p[MEMBERS];
    for (int i = 0; i < MEMBERS; i++)
        p[i] = (struct pollfd){members[i].up ? members[i].c.fd : -1, POLLIN, 0};
    poll(p, MEMBERS, ms);
    for (int i = 0; i < MEMBERS; i++) {
        member *m = &members[i];
        if (m->gone)
            continue;
        if (!m->up) {
            reconnects += member_connect(m);
            continue;
        }
        if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
            continue;
        ws_frame f;
        bool closed = false;
        while (!closed && ws_recv(&m->c, &f, 1) == 0) {
            closed = f.opcode == 8;
            if (closed && f.close_code != 4009)
                fail_msg("a member was closed with %d", f.close_code);
            member_frame(m, &f);
            ws_frame_free(&f);
        }
        if (closed || m->c.broken) /* closed, or the connection broke (kill -9) */
            member_down(m);
    }
}

static void post_some(int *posted, int n)
{
    for (int k = 0; k < n && *posted < POSTS; k++, (*posted)++)
        api_must_drop(S.port, 201, "POST",
                      api_p("/workspaces/%lld/channels/%lld/messages", chan_ws, chan), poster,
                      json_pack("{s:s}", "text", api_p("m%d", *posted)));
}

static pid_t busiest_replica(redisContext *rc)
{
    pid_t pid = 0;
    long most = -1;
    redisReply *ids = redisCommand(rc, "ZRANGE chorus:wss:nodes 0 -1");
    for (size_t i = 0; ids && i < ids->elements; i++) {
        redisReply *h = redisCommand(rc, "HMGET chorus:wss:node:%s connections pid",
                                     ids->element[i]->str);
        if (h && h->element[0]->type == REDIS_REPLY_STRING && atol(h->element[0]->str) > most) {
            most = atol(h->element[0]->str);
            pid = (pid_t)atol(h->element[1]->str);
        }
        freeReplyObject(h);
    }
    freeReplyObject(ids);
    return pid;
}

/* 300 members of one channel, 600 posts: one replica is killed with SIGKILL half-way,
 * then most members leave and the scaler retires replicas while the rest keep going.
 * Every member that stays must get every seq once, in order, across reconnects. */
static void test_kill_and_scale_down_lose_nothing(void **state)
{
    (void)state;
    redisContext *rc = wst_redis(S.redis_url);
    traffic_setup();
    for (int i = 0; i < MEMBERS; i++)
        while (!member_connect(&members[i]))
            usleep(100 * 1000);
    int posted = 0;
    int64_t deadline = test_now_ms() + 180000;
    while (posted < POSTS / 2) {
        post_some(&posted, 5);
        pump(5);
    }
    pid_t victim = busiest_replica(rc);
    assert_true(victim > 0);
    assert_int_equal(kill(victim, SIGKILL), 0);
    print_message("killed replica pid %d after %d posts\n", (int)victim, posted);
    while (posted < POSTS * 3 / 4) {
        post_some(&posted, 5);
        pump(5);
    }
    for (int i = 50; i < MEMBERS; i++) { /* the load drops: replicas retire */
        member_down(&members[i]);
        members[i].gone = true;
    }
    double down0 = test_metric(S.port, "chorus_scaler_decisions_total{action=\"down\"}");
    while (posted < POSTS || test_metric(S.port, "chorus_scaler_decisions_total{action=\"down\"}") <= down0) {
        post_some(&posted, 2);
        pump(20);
        if (test_now_ms() > deadline)
            fail_msg("no scale-down within the test's time (%d posts)", posted);
    }
    long long last = api_db_int(S.pg, api_p("SELECT last_seq FROM channels WHERE id = %lld",
                                            chan), NULL);
    for (int done = 0; !done;) { /* until the 50 that stayed have everything */
        pump(20);
        done = 1;
        for (int i = 0; i < 50; i++)
            done &= members[i].next > last;
        if (test_now_ms() > deadline)
            fail_msg("the members that stayed did not get every message");
    }
    print_message("%d reconnects; lost %d, out of order %d\n", reconnects, lost, out_of_order);
    assert_int_equal(lost, 0);
    assert_int_equal(out_of_order, 0);
    assert_true(reconnects > 0);
    for (int i = 0; i < 50; i++)
        member_down(&members[i]);
    for (int i = 0; i < MEMBERS; i++)
        free(members[i].token);
    free(poster);
    redisFree(rc);
}

static double ups(void)
{
    return test_metric(S.port, "chorus_scaler_decisions_total{action=\"up\"}");
}

/* The only replica stops answering for 5 s (SIGSTOP: its entry expires after 3 s while
 * its process is still there, as in a host stall): the scaler must not start another
 * for "0 live replicas" (it did, in the 100k load test). Silent for longer than 10 s, it
 * is replaced. */
static void test_silent_replica_is_given_time(void **state)
{
    (void)state;
    redisContext *rc = wst_redis(S.redis_url);
    for (int64_t end = test_now_ms() + 60000; registry(rc).nodes != 1; usleep(200 * 1000))
        if (test_now_ms() > end)
            fail_msg("still %d replicas 60 s after the last test", registry(rc).nodes);
    pid_t only = busiest_replica(rc);
    assert_true(only > 0);
    double up0 = ups();
    assert_int_equal(kill(only, SIGSTOP), 0);
    int64_t stopped = test_now_ms();
    usleep(5000 * 1000);
    if (ups() != up0) {
        kill(only, SIGCONT);
        fail_msg("a replica was started within 5 s of the only one going silent");
    }
    assert_int_equal(registry(rc).nodes, 0); /* its entry did expire */
    while (ups() == up0 && test_now_ms() - stopped < 20000)
        usleep(100 * 1000);
    int64_t replaced = test_now_ms() - stopped;
    kill(only, SIGCONT);
    print_message("silent replica replaced after %lld ms\n", (long long)replaced);
    assert_true(ups() > up0);
    assert_true(replaced >= 10000);
    redisFree(rc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ramp_adds_replicas_and_spreads),
        cmocka_unit_test(test_kill_and_scale_down_lose_nothing),
        cmocka_unit_test(test_silent_replica_is_given_time),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
