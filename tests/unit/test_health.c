/* test_health.c - readiness probes and the /readyz JSON body. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "chorus/health.h"
#include "chorus/status.h"

typedef struct fake_dep {
    bool up;
    int calls;
} fake_dep;

static bool fake_probe(void *arg)
{
    fake_dep *d = arg;
    d->calls++;
    return d->up;
}

static int teardown(void **state)
{
    (void)state;
    health_reset();
    return 0;
}

/* Runs health_ready and checks both its result and the JSON it writes. */
static void assert_ready(bool want_ready, const char *want_json)
{
    buf b;
    buf_init(&b, 0);
    assert_int_equal(health_ready(&b), want_ready);
    assert_string_equal(b.data, want_json);
    buf_free(&b);
}

/* No probes: ready, with an empty checks object. */
static void test_no_probes(void **state)
{
    (void)state;
    assert_ready(true, "{\"ready\":true,\"checks\":{}}");
}

/* Every probe runs on each call; one that is down makes the whole not ready. */
static void test_probes(void **state)
{
    (void)state;
    fake_dep pg = {true, 0}, redis = {true, 0};
    assert_int_equal(health_register("postgres", fake_probe, &pg), CHORUS_OK);
    assert_int_equal(health_register("redis", fake_probe, &redis), CHORUS_OK);
    assert_ready(true, "{\"ready\":true,\"checks\":{\"postgres\":true,\"redis\":true}}");
    redis.up = false;
    assert_ready(false, "{\"ready\":false,\"checks\":{\"postgres\":true,\"redis\":false}}");
    assert_int_equal(pg.calls, 2);
    assert_int_equal(redis.calls, 2);
    /* Without an output buffer the probes still run and decide. */
    assert_false(health_ready(NULL));
    assert_int_equal(pg.calls, 3);
}

/* Unregistering by arg removes every probe of that arg and keeps the others in order. */
static void test_unregister(void **state)
{
    (void)state;
    fake_dep a = {true, 0}, b = {false, 0}, c = {true, 0};
    health_register("a", fake_probe, &a);
    health_register("b1", fake_probe, &b);
    health_register("c", fake_probe, &c);
    health_register("b2", fake_probe, &b);
    assert_ready(false, "{\"ready\":false,\"checks\":{\"a\":true,\"b1\":false,\"c\":true,"
                        "\"b2\":false}}");
    health_unregister(&b);
    assert_ready(true, "{\"ready\":true,\"checks\":{\"a\":true,\"c\":true}}");
    health_unregister(&b); /* nothing left to remove */
    health_unregister(NULL);
    assert_ready(true, "{\"ready\":true,\"checks\":{\"a\":true,\"c\":true}}");
}

/* Two probes under one name report once, ready only when both are. */
static void test_same_name(void **state)
{
    (void)state;
    fake_dep up = {true, 0}, down = {false, 0};
    health_register("redis", fake_probe, &down);
    health_register("redis", fake_probe, &up);
    assert_ready(false, "{\"ready\":false,\"checks\":{\"redis\":false}}");
    assert_int_equal(up.calls, 1);
}

/* Names are JSON-escaped. */
static void test_escaping(void **state)
{
    (void)state;
    fake_dep d = {true, 0};
    health_register("we\"ird\\name", fake_probe, &d);
    assert_ready(true, "{\"ready\":true,\"checks\":{\"we\\\"ird\\\\name\":true}}");
}

/* At most 16 probes; bad arguments are refused. */
static void test_limits(void **state)
{
    (void)state;
    fake_dep d = {true, 0};
    char name[16];
    for (int i = 0; i < 16; i++) {
        snprintf(name, sizeof name, "p%d", i);
        assert_int_equal(health_register(name, fake_probe, &d), CHORUS_OK);
    }
    assert_int_equal(health_register("p16", fake_probe, &d), CHORUS_ERR);
    health_reset();
    assert_int_equal(health_register(NULL, fake_probe, &d), CHORUS_ERR);
    assert_int_equal(health_register("", fake_probe, &d), CHORUS_ERR);
    assert_int_equal(health_register("x", NULL, &d), CHORUS_ERR);
    assert_ready(true, "{\"ready\":true,\"checks\":{}}");
}

/* The name is copied: the caller's string may change after registration. */
static void test_name_copied(void **state)
{
    (void)state;
    fake_dep d = {true, 0};
    char name[] = "postgres";
    health_register(name, fake_probe, &d);
    name[0] = 'X';
    assert_ready(true, "{\"ready\":true,\"checks\":{\"postgres\":true}}");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_no_probes, teardown),
        cmocka_unit_test_teardown(test_probes, teardown),
        cmocka_unit_test_teardown(test_unregister, teardown),
        cmocka_unit_test_teardown(test_same_name, teardown),
        cmocka_unit_test_teardown(test_escaping, teardown),
        cmocka_unit_test_teardown(test_limits, teardown),
        cmocka_unit_test_teardown(test_name_copied, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
