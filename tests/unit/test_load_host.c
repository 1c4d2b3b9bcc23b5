/* test_load_host.c - the harness' view of the machine's CPU (loadtest/load_host.c): the
 * shares from two /proc/stat lines, the summary over the seconds of a run, and the
 * kernel's costs timed before the load. */
#include <errno.h>
#include <string.h>
#include <sys/wait.h>

#include "testutil.h"

#include "load.h"

static void test_shares_between_two_lines(void **state)
{
    (void)state;
    host_sample h = {0};
    /* user nice system idle iowait irq softirq steal guest guest_nice */
    assert_true(host_update(&h, "cpu  1000 0 500 8000 100 0 50 10 0 0\n"));
    assert_true(h.busy_pct < 0); /* one line: no interval yet */
    /* +150 busy (100 user, 30 system, 20 softirq), +40 idle, +10 steal: 200 ticks */
    assert_true(host_update(&h, "cpu  1100 0 530 8040 100 0 70 20 0 0\n"));
    assert_float_equal(h.busy_pct, 75.0, 1e-9);
    assert_float_equal(h.steal_pct, 5.0, 1e-9);
    /* a kernel without the steal column (fewer fields): steal counts as 0 */
    host_sample old = {0};
    assert_true(host_update(&old, "cpu 10 0 10 80\n"));
    assert_true(host_update(&old, "cpu 60 0 10 130\n"));
    assert_float_equal(old.busy_pct, 50.0, 1e-9);
    assert_float_equal(old.steal_pct, 0.0, 1e-9);
}

static void test_bad_lines_change_nothing(void **state)
{
    (void)state;
    host_sample h = {0};
    assert_false(host_update(&h, "cpu0 1 2 3 4 5 6 7 8\n"));
    assert_false(host_update(&h, "intr 12345\n"));
    assert_false(host_update(&h, ""));
    assert_false(h.seen);
    assert_true(host_update(&h, "cpu 1 1 1 1\n"));
    assert_true(host_update(&h, "cpu 1 1 1 1\n")); /* no tick passed: shares kept */
    assert_true(h.busy_pct < 0);
}

static series_row row(uint64_t deliveries, double busy, double steal)
{
    return (series_row){.deliveries = deliveries, .host_busy_pct = busy,
                        .host_steal_pct = steal};
}

static void test_summary_of_the_seconds_with_deliveries(void **state)
{
    (void)state;
    series_row rows[] = {row(0, -1, -1), row(0, 20, 0),  row(500, 90, 1), row(500, 99, 4),
                         row(500, 95, 2), row(500, 97, 0), row(0, 10, 9)};
    host_summary s = host_summarize(rows, 7);
    assert_int_equal(s.seconds, 4);
    assert_true(s.with_deliveries);
    assert_float_equal(s.busy_median, 96.0, 1e-9); /* 90 95 97 99 */
    assert_float_equal(s.busy_max, 99.0, 1e-9);
    assert_float_equal(s.steal_median, 1.5, 1e-9);
    assert_float_equal(s.steal_max, 4.0, 1e-9);
    /* no deliveries at all (a connect-only run): every sampled second */
    series_row idle[] = {row(0, -1, -1), row(0, 30, 1), row(0, 10, 3), row(0, 20, 2)};
    s = host_summarize(idle, 4);
    assert_int_equal(s.seconds, 3);
    assert_false(s.with_deliveries);
    assert_float_equal(s.busy_median, 20.0, 1e-9);
    /* never sampled */
    series_row none[] = {row(100, -1, -1)};
    assert_int_equal(host_summarize(none, 1).seconds, 0);
    assert_int_equal(host_summarize(NULL, 0).seconds, 0);
}

/* The kernel's costs before the load: plausible magnitudes, units that agree (a pipe
 * round trip is at least four system calls: it must cost more than two), and no child
 * left behind. */
static void test_calibration(void **state)
{
    (void)state;
    host_sample h = {0};
    host_calibrate(&h);
    print_message("a system call %.0f ns, a round trip %.1f us\n", h.syscall_ns, h.wakeup_us);
    /* no system call takes under 10 ns, nor a round trip 10 ms: a unit slip fails */
    assert_true(h.syscall_ns > 10 && h.syscall_ns < 1e6);
    assert_true(h.wakeup_us > 0 && h.wakeup_us < 1e4);
    assert_true(h.wakeup_us * 1000 > 2 * h.syscall_ns);
    errno = 0;
    assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
    assert_int_equal(errno, ECHILD);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shares_between_two_lines),
        cmocka_unit_test(test_bad_lines_change_nothing),
        cmocka_unit_test(test_summary_of_the_seconds_with_deliveries),
        cmocka_unit_test(test_calibration),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
