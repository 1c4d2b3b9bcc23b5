/* test_load_hist.c - the harness's latency histogram (loadtest/load_hist.c): quantiles
 * within its 3 % bucket width of the exact ones, merging, edges. */
#include <stdlib.h>

#include "testutil.h"

#include "load.h"

static int cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* 100,000 values over six decades: every quantile is within 3.2 % above the exact one. */
static void test_quantiles_are_close(void **state)
{
    (void)state;
    enum { N = 100000 };
    static uint64_t v[N];
    hist *h = calloc(1, sizeof *h);
    srand(7);
    for (int i = 0; i < N; i++) {
        v[i] = 1 + (uint64_t)rand() % 1000 * (uint64_t)(1 + rand() % 1000);
        hist_add(h, v[i]);
    }
    qsort(v, N, sizeof v[0], cmp);
    const double qs[] = {0.5, 0.9, 0.95, 0.99, 0.999};
    for (size_t i = 0; i < sizeof qs / sizeof qs[0]; i++) {
        uint64_t exact = v[(size_t)(qs[i] * N)], got = hist_quantile(h, qs[i]);
        if (got < exact || (double)got > (double)exact * 1.032 + 1)
            fail_msg("q%.3f: %llu, exact %llu", qs[i], (unsigned long long)got,
                     (unsigned long long)exact);
    }
    assert_int_equal(hist_quantile(h, 1.0), v[N - 1]);
    assert_int_equal(h->max_us, v[N - 1]);
    free(h);
}

static void test_merge_and_edges(void **state)
{
    (void)state;
    hist *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    assert_int_equal(hist_quantile(a, 0.99), 0);
    hist_add(a, 0);
    hist_add(a, 5);
    hist_add(b, 1000000);
    hist_add(b, UINT64_MAX / 2); /* past the last bucket: counted there */
    hist_merge(a, b);
    assert_int_equal(a->total, 4);
    assert_int_equal(hist_quantile(a, 0.0), 0);
    assert_int_equal(hist_quantile(a, 0.3), 5);
    assert_true(hist_quantile(a, 0.6) >= 1000000 && hist_quantile(a, 0.6) <= 1032000);
    assert_int_equal(a->max_us, UINT64_MAX / 2);
    free(a);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quantiles_are_close),
        cmocka_unit_test(test_merge_and_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
