/* test_knock.c - the writers' knock (knock.h) against a Redis server of its own: knocks
 * asked for while one is in flight collapse into one more, later ones each go out, a
 * knock while Redis is down is dropped without harm, and a knocker freed with a knock
 * in flight is freed by the reply (ASan sees a leak or a use after free otherwise). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>
#include <hiredis/hiredis.h>

#include "chorus/buf.h"
#include "chorus/knock.h"
#include "chorus/metrics.h"
#include "chorus/rclient.h"
#include "chorus/status.h"
#include "testredis.h"
#include "testutil.h"

static test_redis redis;

static int group_setup(void **state)
{
    (void)state;
    test_redis_init(&redis, false);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    return test_redis_destroy(&redis);
}

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
}

/* Runs the loop for s seconds (a tick keeps ev_run returning). */
static void run_for(struct ev_loop *loop, double s)
{
    ev_timer tick;
    ev_timer_init(&tick, on_tick, 0.005, 0.005);
    ev_timer_start(loop, &tick);
    ev_now_update(loop);
    for (ev_tstamp end = ev_now(loop) + s; ev_now(loop) < end;)
        ev_run(loop, EVRUN_ONCE);
    ev_timer_stop(loop, &tick);
}

static rclient *connected_client(struct ev_loop *loop)
{
    char url[64];
    test_redis_url(&redis, url, sizeof url);
    rclient_opts o = {.url = url, .name = "knock-test", .max_pending = 16,
                      .backoff_min_ms = 20, .backoff_max_ms = 100, .command_timeout_ms = 2000};
    rclient *c = rclient_new(loop, &o);
    assert_non_null(c);
    for (int i = 0; i < 400 && !rclient_connected(c); i++)
        run_for(loop, 0.005);
    assert_true(rclient_connected(c));
    return c;
}

static long long knocks_in_stream(void)
{
    redisContext *rc = test_redis_connect(&redis);
    redisReply *r = redisCommand(rc, "XLEN %s", KNOCK_STREAM);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    long long n = r->integer;
    freeReplyObject(r);
    redisFree(rc);
    return n;
}

static double knocks_sent(void)
{
    buf b;
    buf_init(&b, 0);
    assert_int_equal(metrics_render(&b), CHORUS_OK);
    const char *line = strstr(b.data, "\nchorus_outbox_knocks_total ");
    double v = line ? strtod(line + strlen("\nchorus_outbox_knocks_total "), NULL) : -1;
    buf_free(&b);
    return v;
}

static void test_knocks_coalesce(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    rclient *c = connected_client(loop);
    knocker *k = knocker_new(c);
    assert_non_null(k);
    long long before = knocks_in_stream();

    /* 100 writes in one loop iteration: the first knocks, the other 99 wait for its
     * reply and then go out as one. */
    for (int i = 0; i < 100; i++)
        knocker_knock(k);
    run_for(loop, 0.3);
    assert_int_equal(knocks_in_stream() - before, 2);
    assert_true(knocks_sent() == 2);

    /* Writes far apart each knock. */
    for (int i = 0; i < 3; i++) {
        knocker_knock(k);
        run_for(loop, 0.1);
    }
    assert_int_equal(knocks_in_stream() - before, 5);

    /* Redis down: the knock is dropped (the workers' polling finds the rows); back up,
     * knocks go out again. */
    test_redis_stop(&redis);
    run_for(loop, 0.2);
    knocker_knock(k);
    run_for(loop, 0.1);
    test_redis_start(&redis);
    for (int i = 0; i < 400 && !rclient_connected(c); i++)
        run_for(loop, 0.005);
    assert_true(rclient_connected(c));
    long long after_restart = knocks_in_stream(); /* no AOF: the stream is gone */
    knocker_knock(k);
    run_for(loop, 0.1);
    assert_int_equal(knocks_in_stream() - after_restart, 1);

    /* Freed with a knock in flight: the reply frees it. */
    knocker_knock(k);
    knocker_free(k);
    run_for(loop, 0.1);
    rclient_free(c);
    run_for(loop, 0.05);
    ev_loop_destroy(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_knocks_coalesce),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
