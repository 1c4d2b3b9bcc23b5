/* test_wssreg.c - the gateway's view of the WSS node registry (lib/wssreg.c) against a
 * Redis of its own, where the test writes the nodes' entries as a node would.
 *
 * What is checked is what went wrong in the 100k load test: a poll that lost its
 * replies emptied the view, and a process that was not scheduled for 3 s judged every
 * node gone because their entries looked old by its clock. Both sent the scaler after
 * a replica nobody needed and made /realtime/connect answer 503. And what a starved host
 * did later: replicas that missed their writes for a few seconds dropped out, and
 * /realtime/connect answered 503 beside a fleet that was only late. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ev.h>

#include "chorus/rclient.h"
#include "chorus/wssreg.h"
#include "testloop.h"
#include "testredis.h"

static test_redis R;
static redisContext *rc;
static struct ev_loop *loop;

static int group_setup(void **state)
{
    (void)state;
    test_redis_init(&R, false);
    rc = test_redis_connect(&R);
    loop = ev_loop_new(EVFLAG_AUTO);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    redisFree(rc);
    ev_loop_destroy(loop);
    return test_redis_destroy(&R);
}

static double wall_ms(void)
{
    ev_now_update(loop);
    return ev_now(loop) * 1000;
}

/* What a WSS node writes each second (docs/WSS.md "Registry and capacity"). */
static void beat(const char *id, long connections)
{
    /* The node's expiry: WSSREG_RECENT_MS. */
    double now = wall_ms();
    redisReply *r = redisCommand(rc,
                                 "HSET chorus:wss:node:%s url ws://127.0.0.1:1/ws connections %ld"
                                 " capacity 100 events_per_s 0 draining 0 updated_ms %.0f",
                                 id, connections, now);
    assert_non_null(r);
    freeReplyObject(r);
    r = redisCommand(rc, "PEXPIRE chorus:wss:node:%s %d", id, WSSREG_RECENT_MS);
    freeReplyObject(r);
    r = redisCommand(rc, "ZADD chorus:wss:nodes %.0f %s", now, id);
    assert_non_null(r);
    freeReplyObject(r);
}

typedef struct fixture {
    rclient *r;
    wssreg *g;
} fixture;

static fixture open_view(int trust_ms)
{
    char url[96];
    test_redis_url(&R, url, sizeof url);
    /* a short watchdog, so that a paused Redis drops the connection mid-poll */
    rclient_opts o = {.url = url, .name = "wssreg-test", .command_timeout_ms = 300,
                      .backoff_min_ms = 50, .backoff_max_ms = 200};
    fixture f = {rclient_new(loop, &o), NULL};
    assert_non_null(f.r);
    f.g = wssreg_new(loop, f.r, 50, trust_ms);
    assert_non_null(f.g);
    return f;
}

static void close_view(fixture *f)
{
    wssreg_free(f->g);
    rclient_free(f->r);
    test_run_until(loop, NULL, NULL, 50); /* the freed client's last callbacks */
}

static const char *picked(fixture *f)
{
    const wssreg_node *n = wssreg_pick(f->g, wall_ms());
    return n ? n->id : NULL;
}

static bool sees_node(void *arg)
{
    const char *id = picked(arg);
    return id && strcmp(id, "n1") == 0;
}

static bool sees_none(void *arg)
{
    return picked(arg) == NULL;
}

static bool sees_n2(void *arg)
{
    const char *id = picked(arg);
    return id && strcmp(id, "n2") == 0;
}

static bool live(fixture *f, const char *id)
{
    int n;
    const wssreg_node *nodes = wssreg_nodes(f->g, &n);
    for (int i = 0; i < n; i++)
        if (strcmp(nodes[i].id, id) == 0)
            return wssreg_live(f->g, &nodes[i]);
    return false;
}

static bool sees_live_n1(void *arg)
{
    return live(arg, "n1") && sees_node(arg);
}

/* A poll sent after this call has completed. */
static double fresh_after;
static bool view_is_fresh(void *arg)
{
    return wssreg_read_ms(((fixture *)arg)->g) > fresh_after;
}

static void pause_redis(int ms)
{
    redisReply *r = redisCommand(rc, "CLIENT PAUSE %d ALL", ms);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STATUS);
    freeReplyObject(r);
}

/* Redis stops answering: the client drops the connection, the poll in flight gets no
 * replies, and the view must stay what it was (it was emptied before). Past trust_ms
 * the old view is no longer used. */
static void test_lost_poll_keeps_the_view(void **state)
{
    (void)state;
    fixture f = open_view(1500);
    beat("n1", 10);
    assert_true(test_run_until(loop, sees_node, &f, 3000));

    double resumes = wall_ms() + 2500;
    pause_redis(2500);
    test_run_until(loop, NULL, NULL, 900); /* the watchdog fired at 300 ms: lost replies */
    assert_true(sees_node(&f));
    assert_true(test_run_until(loop, sees_none, &f, 1500)); /* now too old to be used */

    /* Redis answers again, the node writes again: back in the view */
    test_run_until(loop, NULL, NULL, (int)(resumes - wall_ms()) + 100);
    beat("n1", 10);
    assert_true(test_run_until(loop, sees_node, &f, 3000));
    close_view(&f);
}

/* This process is not scheduled for 3.5 s (the test sleeps with the loop in hand):
 * the nodes' entries are older than 3 s by its clock, but they were fresh when the
 * view was read, and that is what counts until the next poll reads the registry. */
static void test_stalled_process_keeps_nodes_live(void **state)
{
    (void)state;
    fixture f = open_view(10000);
    beat("n1", 10);
    assert_true(test_run_until(loop, sees_node, &f, 3000));

    usleep(3500 * 1000);
    assert_true(sees_node(&f));

    /* a fresh view judges the same old entry for what it is: stalled, not live */
    fresh_after = wall_ms();
    assert_true(test_run_until(loop, view_is_fresh, &f, 1000));
    assert_false(live(&f, "n1"));
    beat("n1", 10);
    assert_true(test_run_until(loop, sees_live_n1, &f, 1000));
    close_view(&f);
}

/* Stalled nodes are a last resort: picked only when no live node has room, and only
 * until their entry expires (WSSREG_RECENT_MS); a live node with room comes first. */
static void test_stalled_node_is_a_last_resort(void **state)
{
    (void)state;
    fixture f = open_view(10000);
    beat("n1", 10);
    beat("n2", 100); /* full */
    assert_true(test_run_until(loop, sees_node, &f, 3000));
    usleep(3200 * 1000); /* n1 misses its writes; n2 keeps writing */
    beat("n2", 100);
    fresh_after = wall_ms();
    assert_true(test_run_until(loop, view_is_fresh, &f, 1000));
    assert_false(live(&f, "n1"));
    assert_string_equal(picked(&f), "n1");
    beat("n2", 50); /* n2 has room again: the live node first */
    assert_true(test_run_until(loop, sees_n2, &f, 1000));
    beat("n2", 100);
    usleep(2000 * 1000); /* n1 silent past 5 s: its entry is gone */
    beat("n2", 100);
    assert_true(test_run_until(loop, sees_none, &f, 1000));
    close_view(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lost_poll_keeps_the_view),
        cmocka_unit_test(test_stalled_process_keeps_nodes_live),
        cmocka_unit_test(test_stalled_node_is_a_last_resort),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
