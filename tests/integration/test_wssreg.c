/* test_wssreg.c - the gateway's view of the WSS node registry (lib/wssreg.c) against a
 * Redis of its own, where the test writes the nodes' entries as a node would.
 *
 * What is checked is what went wrong in the 100k load test: a poll that lost its
 * replies emptied the view, and a process that was not scheduled for 3 s judged every
 * node gone because their entries looked old by its clock. Both sent the scaler after
 * a replica nobody needed and made /realtime/connect answer 503. */
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
    double now = wall_ms();
    redisReply *r = redisCommand(rc,
                                 "HSET chorus:wss:node:%s url ws://127.0.0.1:1/ws connections %ld"
                                 " capacity 100 events_per_s 0 draining 0 updated_ms %.0f",
                                 id, connections, now);
    assert_non_null(r);
    freeReplyObject(r);
    r = redisCommand(rc, "PEXPIRE chorus:wss:node:%s 3000", id);
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

    /* a fresh view judges the same old entry for what it is */
    assert_true(test_run_until(loop, sees_none, &f, 1000));
    beat("n1", 10);
    assert_true(test_run_until(loop, sees_node, &f, 1000));
    close_view(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lost_poll_keeps_the_view),
        cmocka_unit_test(test_stalled_process_keeps_nodes_live),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
