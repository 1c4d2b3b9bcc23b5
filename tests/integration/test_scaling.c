/* test_scaling.c - WSS replicas that follow the connection count (issue 6):
 * `chorus run --roles gateway,outbox,scaler` with a capacity of 200 sessions per node
 * starts with one replica; 1,000 clients connect through POST /realtime/connect; the
 * scaler adds replicas by itself, no node ever holds more than its capacity, and once
 * the ramp is done the nodes' loads are within 10 % of each other (the scaler has the
 * fullest shed their excess, whose clients reconnect through the gateway). Then the
 * clients leave and the extra replicas are retired. */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "api.h"
#include "wstest.h"

enum { CLIENTS = 1000, CAPACITY = 200 };

static api_server S;
static ws_client clients[CLIENTS];
static char *tokens[CLIENTS];

static int group_setup(void **state)
{
    (void)state;
    api_db_create(&S, "scaling");
    static char env_port[64];
    snprintf(env_port, sizeof env_port, "CHORUS_WSS_PORT=%d", test_free_port());
    const char *env[] = {env_port, "CHORUS_NODE_ID=scale",
                         "CHORUS_MAX_CONNECTIONS=200", "CHORUS_WSS_REPLICAS_MAX=10",
                         "CHORUS_SCALE_DOWN_AFTER_S=3", NULL};
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

    /* let the scaler even the load: quiet for 5 s and within 10 % of the average */
    view v;
    double spread = 1;
    int64_t quiet_since = test_now_ms();
    for (int64_t end = test_now_ms() + 60000;; usleep(200 * 1000)) {
        if (reconnect_closed() > 0)
            quiet_since = test_now_ms();
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ramp_adds_replicas_and_spreads),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
