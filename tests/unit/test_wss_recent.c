/* test_wss_recent.c - a channel's recent-event buffer (wss_recent.c): what it keeps,
 * when it can answer a resume, and that its byte count stays exact. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "wss_internal.h"

static wss_frame *frame(int64_t seq)
{
    char text[32];
    snprintf(text, sizeof text, "{\"seq\":%lld}", (long long)seq);
    return wss_frame_new(text, strlen(text), false);
}

/* Pushes seqs first..last (a frame each, released after the push as fan-out does). */
static size_t push_run(wss_recent *r, int cap, int64_t first, int64_t last, size_t *bytes)
{
    size_t added = 0;
    for (int64_t s = first; s <= last; s++) {
        wss_frame *f = frame(s);
        added += f->len;
        wss_recent_push(r, cap, s, f, NULL, bytes);
        wss_frame_unref(f);
    }
    return added;
}

static void test_keeps_the_last_cap_events(void **state)
{
    (void)state;
    wss_recent r = {0};
    size_t bytes = 0;
    push_run(&r, 4, 1, 10, &bytes);
    assert_int_equal(r.n, 4);
    assert_int_equal(wss_recent_at(&r, 0)->seq, 7);
    assert_int_equal(wss_recent_last(&r), 10);
    size_t want = 0;
    for (int i = 0; i < r.n; i++)
        want += wss_recent_at(&r, i)->json->len;
    assert_int_equal(bytes, want);
    wss_recent_clear(&r, &bytes);
    assert_int_equal(bytes, 0);
    assert_int_equal(r.n, 0);
}

/* It answers for a position from one before its first seq on, never before. */
static void test_covers(void **state)
{
    (void)state;
    wss_recent r = {0};
    size_t bytes = 0;
    assert_false(wss_recent_covers(&r, 0)); /* empty: it knows nothing */
    push_run(&r, 8, 20, 25, &bytes);
    assert_true(wss_recent_covers(&r, 19));
    assert_true(wss_recent_covers(&r, 22));
    assert_true(wss_recent_covers(&r, 25));
    assert_true(wss_recent_covers(&r, 30)); /* nothing missed that the node has read */
    assert_false(wss_recent_covers(&r, 18));
    wss_recent_clear(&r, &bytes);
}

/* A seq that does not follow the last starts the run again. */
static void test_a_break_restarts_the_run(void **state)
{
    (void)state;
    wss_recent r = {0};
    size_t bytes = 0;
    push_run(&r, 8, 1, 5, &bytes);
    size_t after = push_run(&r, 8, 9, 10, &bytes);
    assert_int_equal(r.n, 2);
    assert_int_equal(wss_recent_at(&r, 0)->seq, 9);
    assert_int_equal(bytes, after);
    assert_false(wss_recent_covers(&r, 5));
    assert_true(wss_recent_covers(&r, 8));
    wss_recent_clear(&r, &bytes);
}

/* The buffer holds references: a frame lives while the buffer keeps it. */
static void test_references(void **state)
{
    (void)state;
    wss_recent r = {0};
    size_t bytes = 0;
    wss_frame *j = frame(1), *m = wss_frame_new("\x81", 1, true);
    wss_recent_push(&r, 2, 1, j, m, &bytes);
    assert_int_equal(j->refs, 2);
    assert_int_equal(m->refs, 2);
    assert_int_equal(bytes, j->len + 1);
    assert_true(wss_recent_drop_oldest(&r, &bytes));
    assert_int_equal(j->refs, 1);
    assert_int_equal(bytes, 0);
    assert_false(wss_recent_drop_oldest(&r, &bytes));
    wss_recent_push(&r, 0, 2, j, NULL, &bytes); /* cap 0: keeps nothing */
    assert_int_equal(r.n, 0);
    wss_frame_unref(j);
    wss_frame_unref(m);
    wss_recent_clear(&r, &bytes);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keeps_the_last_cap_events),
        cmocka_unit_test(test_covers),
        cmocka_unit_test(test_a_break_restarts_the_run),
        cmocka_unit_test(test_references),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
