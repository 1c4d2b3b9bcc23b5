/* test_password.c - scrypt hashes: verify, reject, salted, malformed input. */
#include <string.h>

#include "chorus/password.h"
#include "chorus/status.h"
#include "testutil.h"

/* A hash verifies its own password and no other. */
static void test_roundtrip(void **state)
{
    (void)state;
    char h[160];
    assert_int_equal(password_hash("correct horse", 10, h, sizeof h), CHORUS_OK);
    assert_true(strncmp(h, "$scrypt$ln=10,r=8,p=1$", 22) == 0);
    assert_true(password_verify("correct horse", h));
    assert_false(password_verify("correct horsf", h));
    assert_false(password_verify("", h));
}

/* The same password hashes differently each time (random salt). */
static void test_salted(void **state)
{
    (void)state;
    char a[160], b[160];
    password_hash("pw", 10, a, sizeof a);
    password_hash("pw", 10, b, sizeof b);
    assert_string_not_equal(a, b);
    assert_true(password_verify("pw", a) && password_verify("pw", b));
}

/* The default cost is what the header promises, and verifies. */
static void test_default_cost(void **state)
{
    (void)state;
    char h[160];
    assert_int_equal(password_hash("pw", PASSWORD_SCRYPT_LN, h, sizeof h), CHORUS_OK);
    assert_non_null(strstr(h, "ln=17,"));
    assert_true(password_verify("pw", h));
}

/* Malformed or hostile stored hashes are refused, never crash or run forever. */
static void test_malformed(void **state)
{
    (void)state;
    const char *bad[] = {
        "", "$scrypt$", "plain", "$scrypt$ln=10,r=8,p=1$$",
        "$scrypt$ln=40,r=8,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaA",       /* cost too high */
        "$scrypt$ln=10,r=8,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaA",       /* short key */
        "$scrypt$ln=10,r=999,p=1$c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",
        "$pbkdf2$whatever",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(password_verify("pw", bad[i]));
    char small[20];
    assert_int_equal(password_hash("pw", 10, small, sizeof small), CHORUS_ERR);
    assert_int_equal(password_hash("pw", 9, small, sizeof small), CHORUS_ERR);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_salted),
        cmocka_unit_test(test_default_cost),
        cmocka_unit_test(test_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
