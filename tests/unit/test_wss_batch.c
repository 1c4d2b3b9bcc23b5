/* test_wss_batch.c - the batch queue of channel loads and resumes (wss_batch.c): what
 * gathers into one query, the order, the bound on queries out and on batches waiting,
 * and who answers what when the node stops. The queries are this file's callbacks: the
 * queue never sees Postgres. */
#include <stdint.h>
#include <string.h>

#include "testutil.h"

#include "wss_batch.h"

#define MAX_SEEN 64

typedef struct {
    bool refuse;                 /* send answers the batch as failed itself */
    wss_batch *out[MAX_SEEN];    /* batches sent and not yet done, in order */
    int nout;
    intptr_t sent[MAX_SEEN][8];  /* the items of each batch sent, in order */
    int sent_n[MAX_SEEN], nsent;
    intptr_t failed[MAX_SEEN];   /* items answered as failed, and why */
    const char *why[MAX_SEEN];
    int nfailed;
} record;

static void note_items(record *r, const wss_batch *b)
{
    assert_true(r->nsent < MAX_SEEN && b->n <= 8);
    for (int i = 0; i < b->n; i++)
        r->sent[r->nsent][i] = (intptr_t)b->items[i];
    r->sent_n[r->nsent++] = b->n;
}

static void on_fail(void *ctx, wss_batch *b, const char *why)
{
    record *r = ctx;
    for (int i = 0; i < b->n; i++) {
        assert_true(r->nfailed < MAX_SEEN);
        r->why[r->nfailed] = why;
        r->failed[r->nfailed++] = (intptr_t)b->items[i];
    }
}

static bool on_send(void *ctx, wss_batch *b)
{
    record *r = ctx;
    note_items(r, b);
    if (r->refuse) {
        on_fail(ctx, b, "refused");
        return false;
    }
    r->out[r->nout++] = b;
    return true;
}

/* Answers the oldest query out. */
static void answer_oldest(record *r)
{
    assert_true(r->nout > 0);
    wss_batch *b = r->out[0];
    memmove(r->out, r->out + 1, (size_t)--r->nout * sizeof *r->out);
    wss_batcher_done(b);
}

/* One pass of the loop without waiting: where the queue sends (ev_prepare). */
static void loop_once(struct ev_loop *loop)
{
    ev_run(loop, EVRUN_NOWAIT);
}

static wss_batcher *queue(struct ev_loop *loop, record *r, int max_weight, int inflight,
                          int waiting)
{
    wss_batcher_opts o = {.max_weight = max_weight, .inflight_max = inflight,
                          .waiting_max = waiting, .send = on_send, .fail = on_fail, .ctx = r,
                          .overflow_why = "overflow"};
    wss_batcher *q = wss_batcher_new(loop, &o);
    assert_non_null(q);
    return q;
}

static void add(wss_batcher *q, intptr_t item, int weight)
{
    assert_true(wss_batcher_add(q, (void *)item, weight));
}

static void assert_batch(const record *r, int k, int n, intptr_t first)
{
    assert_true(k < r->nsent);
    assert_int_equal(r->sent_n[k], n);
    for (int i = 0; i < n; i++)
        assert_int_equal(r->sent[k][i], first + i);
}

static void test_one_iteration_is_one_query(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    record r = {0};
    wss_batcher *q = queue(loop, &r, 128, 2, 4);
    for (intptr_t i = 1; i <= 5; i++)
        add(q, i, 1);
    assert_int_equal(r.nsent, 0); /* nothing goes out before the loop would wait */
    loop_once(loop);
    assert_int_equal(r.nsent, 1);
    assert_batch(&r, 0, 5, 1);
    answer_oldest(&r);
    loop_once(loop);
    assert_int_equal(r.nsent, 1); /* nothing left: no empty query */
    assert_int_equal(r.nfailed, 0);
    wss_batcher_free(q, "stopping");
    ev_loop_destroy(loop);
}

/* A batch closes at max_weight; one request heavier than that goes alone. */
static void test_weight_splits_in_order(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    record r = {0};
    wss_batcher *q = queue(loop, &r, 4, 8, 8);
    for (intptr_t i = 1; i <= 10; i++)
        add(q, i, 1);
    add(q, 11, 6);
    add(q, 12, 3);
    loop_once(loop);
    assert_int_equal(r.nsent, 5);
    assert_batch(&r, 0, 4, 1);
    assert_batch(&r, 1, 4, 5);
    assert_batch(&r, 2, 2, 9);  /* 9, 10: with 11's weight it would pass 4 */
    assert_batch(&r, 3, 1, 11);
    assert_batch(&r, 4, 1, 12);
    while (r.nout > 0)
        answer_oldest(&r);
    wss_batcher_free(q, "stopping");
    ev_loop_destroy(loop);
}

/* At most inflight_max queries out; the rest go in order as answers come. */
static void test_queries_out_are_bounded(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    record r = {0};
    wss_batcher *q = queue(loop, &r, 2, 2, 8);
    for (intptr_t i = 1; i <= 10; i++)
        add(q, i, 1);
    loop_once(loop);
    assert_int_equal(r.nsent, 2);
    assert_int_equal(r.nout, 2);
    answer_oldest(&r);
    assert_int_equal(r.nsent, 2); /* the next goes when the loop passes, not inside done */
    loop_once(loop);
    assert_int_equal(r.nsent, 3);
    assert_int_equal(r.nout, 2);
    while (r.nout > 0) {
        answer_oldest(&r);
        loop_once(loop);
    }
    assert_int_equal(r.nsent, 5);
    for (int k = 0; k < 5; k++)
        assert_batch(&r, k, 2, 1 + 2 * k);
    assert_int_equal(r.nfailed, 0);
    wss_batcher_free(q, "stopping");
    ev_loop_destroy(loop);
}

/* Past waiting_max full batches, the batch that closes fails whole, with overflow_why;
 * the line goes on once it has room again. */
static void test_overflow_fails_the_batch(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    record r = {0};
    wss_batcher *q = queue(loop, &r, 2, 1, 2);
    for (intptr_t i = 1; i <= 6; i++)
        add(q, i, 1); /* [1 2] [3 4] wait; [5 6] finds the line full */
    assert_int_equal(r.nfailed, 2);
    assert_int_equal(r.failed[0], 5);
    assert_int_equal(r.failed[1], 6);
    assert_string_equal(r.why[0], "overflow");
    add(q, 7, 1);
    loop_once(loop);
    assert_int_equal(r.nsent, 1);
    assert_batch(&r, 0, 2, 1);
    add(q, 8, 1); /* [7 8] closes: [3 4] is the only one waiting */
    assert_int_equal(r.nfailed, 2);
    for (int k = 1; k < 3; k++) {
        answer_oldest(&r);
        loop_once(loop);
        assert_int_equal(r.nsent, k + 1);
    }
    assert_batch(&r, 1, 2, 3);
    assert_batch(&r, 2, 2, 7);
    answer_oldest(&r);
    wss_batcher_free(q, "stopping");
    ev_loop_destroy(loop);
}

/* A refused query answered its items itself: it holds no slot. */
static void test_refused_query_holds_no_slot(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    record r = {.refuse = true};
    wss_batcher *q = queue(loop, &r, 1, 1, 8);
    for (intptr_t i = 1; i <= 3; i++)
        add(q, i, 1);
    loop_once(loop);
    assert_int_equal(r.nsent, 3);
    assert_int_equal(r.nfailed, 3);
    assert_string_equal(r.why[2], "refused");
    r.refuse = false;
    add(q, 4, 1);
    loop_once(loop);
    assert_int_equal(r.nsent, 4);
    assert_int_equal(r.nout, 1);
    answer_oldest(&r);
    wss_batcher_free(q, "stopping");
    ev_loop_destroy(loop);
}

/* Freeing fails what waits at once; the query out still ends with done, which frees
 * the queue (ASan: neither a leak nor a use after free). */
static void test_free_with_a_query_out(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    record r = {0};
    wss_batcher *q = queue(loop, &r, 2, 1, 8);
    for (intptr_t i = 1; i <= 7; i++)
        add(q, i, 1);
    loop_once(loop);
    assert_int_equal(r.nout, 1);
    wss_batcher_free(q, "stopping");
    assert_int_equal(r.nfailed, 5); /* [3 4] [5 6] waiting, [7] filling */
    for (int i = 0; i < 5; i++) {
        assert_int_equal(r.failed[i], 3 + i);
        assert_string_equal(r.why[i], "stopping");
    }
    loop_once(loop);
    assert_int_equal(r.nsent, 1);
    answer_oldest(&r);
    loop_once(loop);
    assert_int_equal(r.nsent, 1);
    ev_loop_destroy(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_iteration_is_one_query),
        cmocka_unit_test(test_weight_splits_in_order),
        cmocka_unit_test(test_queries_out_are_bounded),
        cmocka_unit_test(test_overflow_fails_the_batch),
        cmocka_unit_test(test_refused_query_holds_no_slot),
        cmocka_unit_test(test_free_with_a_query_out),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
