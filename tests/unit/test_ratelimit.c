/* test_ratelimit.c - token buckets per key, on simulated time: burst, refill,
 * retry-after, the unlimited rate, and the bounded table under a flood of keys. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "chorus/ratelimit.h"
#include "testutil.h"

static int count_allowed(ratelimit *r, int64_t key, double now, int tries)
{
    int n = 0;
    for (int i = 0; i < tries; i++)
        n += ratelimit_take(r, key, now, NULL);
    return n;
}

/* A new key may make burst requests at once, then is refused. */
static void test_burst_then_deny(void **state)
{
    (void)state;
    ratelimit *r = ratelimit_new(1, 5, 100);
    assert_non_null(r);
    double retry = -1;
    for (int i = 0; i < 5; i++) {
        assert_true(ratelimit_take(r, 7, 100, &retry));
        assert_true(retry == 0);
    }
    assert_false(ratelimit_take(r, 7, 100, &retry));
    assert_true(retry > 0);
    /* Another key has its own bucket. */
    assert_true(ratelimit_take(r, 8, 100, NULL));
    ratelimit_free(r);
}

/* Tokens come back at rate per second, never past burst. */
static void test_refill(void **state)
{
    (void)state;
    ratelimit *r = ratelimit_new(2, 4, 100);
    assert_int_equal(count_allowed(r, 1, 0, 10), 4);
    assert_int_equal(count_allowed(r, 1, 0.5, 10), 1);
    assert_int_equal(count_allowed(r, 1, 1.0, 10), 1);
    assert_int_equal(count_allowed(r, 1, 2.0, 10), 2);
    assert_int_equal(count_allowed(r, 1, 1000, 10), 4); /* long idle: burst, not 2000 */
    /* A clock going backwards gives nothing back, and takes nothing either. */
    assert_int_equal(count_allowed(r, 1, 500, 10), 0);
    assert_int_equal(count_allowed(r, 1, 1000.5, 10), 1);
    ratelimit_free(r);
}

/* retry_after is the wait for one token, and waiting exactly that long is enough. */
static void test_retry_after(void **state)
{
    (void)state;
    ratelimit *r = ratelimit_new(0.5, 1, 10); /* one token every 2 s */
    double retry = 0;
    assert_true(ratelimit_take(r, 1, 10, &retry));
    assert_false(ratelimit_take(r, 1, 10, &retry));
    assert_true(fabs(retry - 2.0) < 1e-9);
    assert_false(ratelimit_take(r, 1, 11.5, &retry));
    assert_true(fabs(retry - 0.5) < 1e-9);
    assert_true(ratelimit_take(r, 1, 11.5 + retry, &retry));
    ratelimit_free(r);

    r = ratelimit_new(50, 3, 10);
    assert_int_equal(count_allowed(r, 9, 1.0, 3), 3);
    assert_false(ratelimit_take(r, 9, 1.0, &retry));
    assert_true(fabs(retry - 0.02) < 1e-9);
    assert_int_equal((int)ceil(retry), 1); /* what a Retry-After header would say */
    for (int i = 0; i < 100; i++) { /* exact waits, repeatedly, with float times */
        double now = 1.0 + 0.02 * (i + 1);
        assert_true(ratelimit_take(r, 9, now, NULL));
        assert_false(ratelimit_take(r, 9, now, &retry));
    }
    ratelimit_free(r);
}

/* rate 0 means no limit: every take succeeds and there is no table to fill. */
static void test_rate_zero(void **state)
{
    (void)state;
    ratelimit *r = ratelimit_new(0, 0, 0);
    assert_non_null(r);
    double retry = -1;
    for (int64_t k = 0; k < 100000; k++)
        assert_true(ratelimit_take(r, k % 3, 0, &retry));
    assert_true(retry == 0);
    ratelimit_stats st;
    ratelimit_get_stats(r, &st);
    assert_int_equal(st.keys, 0);
    ratelimit_free(r);
}

/* 20 drained keys among 80 fresh ones, then 100000 new keys through a 100-key table:
 * the table never holds more than 100 keys, the fresh keys evict each other (they have
 * the most tokens), and every drained key is still found and refused all along, while
 * deletions move the entries around it. The drained keys go in after the fresh ones so
 * that many sit away from their home slot, where a broken deletion would cut them off;
 * and they are checked often, because a key cut off by a hole is found again once a
 * new key fills that hole. */
static void test_flood_keeps_active_keys(void **state)
{
    (void)state;
    ratelimit *r = ratelimit_new(0.001, 2, 100);
    for (int64_t k = 1; k <= 80; k++)
        assert_true(ratelimit_take(r, -k, 0, NULL));
    for (int64_t k = 1; k <= 20; k++)
        assert_int_equal(count_allowed(r, k, 0, 3), 2);
    ratelimit_stats st;
    for (int64_t k = 1000; k < 101000; k++) {
        assert_true(ratelimit_take(r, k * 7919, 1, NULL));
        ratelimit_get_stats(r, &st);
        assert_true(st.keys <= 100);
        if (k % 10 == 0)
            for (int64_t d = 1; d <= 20; d++)
                assert_false(ratelimit_take(r, d, 1, NULL));
    }
    assert_int_equal(st.keys, 100);
    assert_true(st.evicted_active > 0);
    for (int64_t k = 1; k <= 20; k++)
        assert_false(ratelimit_take(r, k, 2, NULL));
    ratelimit_free(r);
}

/* A key inserted by evicting another is found again at once: each new key in a full
 * table gets exactly burst requests. */
static void test_found_after_eviction(void **state)
{
    (void)state;
    ratelimit *r = ratelimit_new(0.001, 2, 100);
    for (int64_t k = 0; k < 20000; k++)
        assert_int_equal(count_allowed(r, k * 7919 + 1, 1, 3), 2);
    ratelimit_stats st;
    ratelimit_get_stats(r, &st);
    assert_int_equal(st.keys, 100);
    ratelimit_free(r);
}

/* When the table is full of refilled buckets, those are what gets evicted. */
static void test_idle_evicted_first(void **state)
{
    (void)state;
    ratelimit *r = ratelimit_new(1, 2, 8);
    for (int64_t k = 0; k < 8; k++)
        assert_true(ratelimit_take(r, k, 0, NULL));
    for (int64_t k = 100; k < 108; k++)
        assert_true(ratelimit_take(r, k, 100, NULL));
    ratelimit_stats st;
    ratelimit_get_stats(r, &st);
    assert_int_equal(st.keys, 8);
    assert_int_equal(st.evicted_idle, 8);
    assert_int_equal(st.evicted_active, 0);
    ratelimit_free(r);
}

/* Ten simulated seconds: four clients ask every millisecond while new keys arrive
 * every 0.1 ms through a 32-key table. No client gets more than burst + rate * time. */
static void test_rate_held_under_churn(void **state)
{
    (void)state;
    const double rate = 10, burst = 5, seconds = 10;
    ratelimit *r = ratelimit_new(rate, burst, 32);
    int allowed[4] = {0};
    int64_t next_key = 1000;
    for (int tick = 0; tick < 100000; tick++) {
        double now = tick * 0.0001;
        ratelimit_take(r, next_key++, now, NULL);
        if (tick % 10 == 0)
            for (int c = 0; c < 4; c++)
                allowed[c] += ratelimit_take(r, c + 1, now, NULL);
    }
    for (int c = 0; c < 4; c++) {
        assert_true(allowed[c] <= burst + rate * seconds);
        assert_true(allowed[c] >= rate * seconds); /* and is not starved either */
    }
    ratelimit_stats st;
    ratelimit_get_stats(r, &st);
    assert_true(st.keys <= 32);
    ratelimit_free(r);
}

/* A table exactly as large as the key set never evicts and keeps every bucket. */
static void test_full_table_no_eviction(void **state)
{
    (void)state;
    ratelimit *r = ratelimit_new(1, 3, 1000);
    for (int64_t k = -500; k < 500; k++)
        assert_int_equal(count_allowed(r, k * 1000003, 0, 4), 3);
    for (int64_t k = -500; k < 500; k++)
        assert_false(ratelimit_take(r, k * 1000003, 0.5, NULL));
    ratelimit_stats st;
    ratelimit_get_stats(r, &st);
    assert_int_equal(st.keys, 1000);
    assert_int_equal(st.evicted_idle + st.evicted_active, 0);
    ratelimit_free(r);
}

/* Bad arguments give NULL. */
static void test_bad_args(void **state)
{
    (void)state;
    assert_null(ratelimit_new(-1, 5, 10));
    assert_null(ratelimit_new(NAN, 5, 10));
    assert_null(ratelimit_new(INFINITY, 5, 10));
    assert_null(ratelimit_new(1, 0.5, 10));
    assert_null(ratelimit_new(1, NAN, 10));
    assert_null(ratelimit_new(1, 5, 0));
    assert_null(ratelimit_new(1, 5, (size_t)RATELIMIT_MAX_KEYS + 1));
    ratelimit_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_deny),
        cmocka_unit_test(test_refill),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_rate_zero),
        cmocka_unit_test(test_flood_keeps_active_keys),
        cmocka_unit_test(test_found_after_eviction),
        cmocka_unit_test(test_idle_evicted_first),
        cmocka_unit_test(test_rate_held_under_churn),
        cmocka_unit_test(test_full_table_no_eviction),
        cmocka_unit_test(test_bad_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
