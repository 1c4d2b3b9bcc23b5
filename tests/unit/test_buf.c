/* test_buf.c - the bounded buffer: appends, bound, printf, steal. */
#include <stdlib.h>
#include <string.h>

#include "chorus/buf.h"
#include "chorus/status.h"
#include "testutil.h"

/* Appends grow the buffer and keep it NUL-terminated. */
static void test_append_and_nul(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 0);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(buf_puts(&b, "ab"), CHORUS_OK);
    assert_int_equal(b.len, 2000);
    assert_int_equal(b.data[2000], '\0');
    assert_int_equal(buf_printf(&b, "%d-%s", 42, "x"), CHORUS_OK);
    assert_string_equal(b.data + 2000, "42-x");
    buf_free(&b);
}

/* Past the bound an append fails with CHORUS_AGAIN and changes nothing. */
static void test_bound(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 10);
    assert_int_equal(buf_append(&b, "0123456789", 10), CHORUS_OK);
    assert_int_equal(buf_append(&b, "x", 1), CHORUS_AGAIN);
    assert_int_equal(buf_printf(&b, "%s", "y"), CHORUS_AGAIN);
    assert_int_equal(b.len, 10);
    assert_string_equal(b.data, "0123456789");
    buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_int_equal(buf_append(&b, "abc", 3), CHORUS_OK);
    buf_free(&b);
}

/* steal hands over the storage, and "" for an empty buffer. */
static void test_steal(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 0);
    char *s = buf_steal(&b);
    assert_string_equal(s, "");
    free(s);
    buf_puts(&b, "hello");
    s = buf_steal(&b);
    assert_string_equal(s, "hello");
    assert_null(b.data);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_and_nul),
        cmocka_unit_test(test_bound),
        cmocka_unit_test(test_steal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
