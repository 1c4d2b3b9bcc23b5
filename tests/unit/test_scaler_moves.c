/* test_scaler_moves.c - which nodes the scaler asks to shed sessions, and how many. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "gateway.h"

#define N(a) ((int)(sizeof(a) / sizeof((a)[0])))

static long sum(const long *v, int n)
{
    long s = 0;
    for (int i = 0; i < n; i++)
        s += v[i];
    return s;
}

/* Within 5 % of the average: nobody moves. */
static void test_even_fleet_stays(void **state)
{
    (void)state;
    long conns[] = {100, 103, 97, 101, 99};
    long moves[N(conns)];
    scaler_moves(conns, N(conns), 60, moves);
    assert_int_equal(sum(moves, N(conns)), 0);
}

/* A node more than 5 % over sheds down to the average (rounded up). */
static void test_node_over_sheds_its_excess(void **state)
{
    (void)state;
    long conns[] = {130, 100, 100, 100}; /* average 107.5 */
    long moves[N(conns)];
    scaler_moves(conns, N(conns), 60, moves);
    assert_int_equal(moves[0], 130 - 108);
    assert_int_equal(sum(moves, N(conns)), 130 - 108);
}

/* The fleet test_scaling once stopped at: seven nodes, 1,000 sessions, none more than
 * 5 % over the average (143), one 12 % under it. Those over the average shed down to
 * it, so the clients they move fill the emptiest one. */
static void test_node_under_is_filled(void **state)
{
    (void)state;
    long conns[] = {151, 151, 150, 150, 146, 125, 127};
    long moves[N(conns)];
    scaler_moves(conns, N(conns), 60, moves);
    long want[] = {8, 8, 7, 7, 3, 0, 0};
    assert_memory_equal(moves, want, sizeof want);
}

/* A round moves at most the budget, shared in proportion to the excess. */
static void test_budget_shared(void **state)
{
    (void)state;
    long conns[] = {900, 600, 0}; /* a new replica; average 500 */
    long moves[N(conns)];
    scaler_moves(conns, N(conns), 60, moves);
    assert_int_equal(moves[0], 48); /* 400 of the 500 in excess: 0.12 of each */
    assert_int_equal(moves[1], 12);
    assert_int_equal(moves[2], 0);
}

/* Nodes that are not live (draining, silent: conns < 0) neither count nor move. */
static void test_dead_nodes_ignored(void **state)
{
    (void)state;
    long conns[] = {-1, 100, 100};
    long moves[N(conns)];
    scaler_moves(conns, N(conns), 60, moves);
    assert_int_equal(sum(moves, N(conns)), 0);
    long uneven[] = {150, -1, 100}; /* average 125 */
    scaler_moves(uneven, N(uneven), 60, moves);
    assert_int_equal(moves[0], 25);
    assert_int_equal(moves[1], 0);
    assert_int_equal(moves[2], 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_even_fleet_stays),
        cmocka_unit_test(test_node_over_sheds_its_excess),
        cmocka_unit_test(test_node_under_is_filled),
        cmocka_unit_test(test_budget_shared),
        cmocka_unit_test(test_dead_nodes_ignored),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
