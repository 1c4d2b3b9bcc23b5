/* test_wss_members_decode.c - the cached channel list of the WSS node as it is read
 * back (wss_members_decode, wss/wss_members.h): only under the version it was stored
 * with, and only when well formed and within the bound. The cache itself runs against
 * Redis in tests/integration/test_wss_members.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "wss_members.h"

static int decode(const char *value, const char *version, int64_t **out)
{
    return wss_members_decode(value, strlen(value), version, strlen(version), out);
}

/* A list under the current version is the user's channels; an empty one is a hit
 * with none. */
static void test_current_version(void **state)
{
    (void)state;
    int64_t *ids = NULL;
    assert_int_equal(decode("1795465248725124|12,7,300000000000", "1795465248725124", &ids), 3);
    assert_int_equal(ids[0], 12);
    assert_int_equal(ids[1], 7);
    assert_int_equal(ids[2], 300000000000LL);
    free(ids);
    assert_int_equal(decode("17|", "17", &ids), 0);
    assert_null(ids);
}

/* A list of another version is not the user's: not a prefix, not a longer one. */
static void test_other_version(void **state)
{
    (void)state;
    int64_t *ids = NULL;
    assert_int_equal(decode("17|1,2", "18", &ids), -1);
    assert_int_equal(decode("17|1,2", "170", &ids), -1);
    assert_int_equal(decode("170|1,2", "17", &ids), -1);
    assert_int_equal(decode("17|1,2", "", &ids), -1);
    assert_null(ids);
}

/* Anything else is malformed: no separator, empty ids, signs, spaces, overflow. */
static void test_malformed(void **state)
{
    (void)state;
    const char *bad[] = {"17", "17|,", "17|1,", "17|,1", "17|1,,2", "17|-1", "17|+1",
                         "17| 1", "17|1 ", "17|1x", "17|1234567890123456789"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t *ids = NULL;
        if (decode(bad[i], "17", &ids) != -2)
            fail_msg("\"%s\" was accepted", bad[i]);
        assert_null(ids);
    }
}

/* At most WSS_MEMBERS_MAX ids: the query's bound. */
static void test_bound(void **state)
{
    (void)state;
    char *v = malloc(8 + (WSS_MEMBERS_MAX + 1) * 2);
    char *p = v + sprintf(v, "5|1");
    for (int i = 1; i < WSS_MEMBERS_MAX; i++)
        p += sprintf(p, ",1");
    int64_t *ids = NULL;
    assert_int_equal(decode(v, "5", &ids), WSS_MEMBERS_MAX);
    free(ids);
    sprintf(p, ",1");
    assert_int_equal(decode(v, "5", &ids), -2);
    assert_null(ids);
    free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_current_version),
        cmocka_unit_test(test_other_version),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_bound),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
