/* test_jwt.c - HS256 tokens: round trip, interop with other implementations, and every
 * kind of token the verifier must refuse. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "chorus/jwt.h"
#include "chorus/status.h"
#include "testutil.h"

#define SECRET "chorus-interop-secret-0123456789abcdef"
#define SECRET_LEN (sizeof SECRET - 1)
#define NOW 1700000100

/* Tokens made outside Chorus, by Python 3.11's hmac/hashlib/base64 modules:
 *   b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b'=').decode()
 *   s = b64(header.encode()) + "." + b64(claims.encode())
 *   token = s + "." + b64(hmac.new(SECRET, s.encode(), hashlib.sha256).digest())
 * The signature of PY_STD was also checked with
 *   printf '%s' "$s" | openssl dgst -sha256 -hmac "$SECRET" -binary | base64 | tr '+/' '-_'
 */
/* header {"alg":"HS256","typ":"JWT"}, claims {"sub":"42","iat":1700000000,"exp":4102444800} */
static const char py_std[] =
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJzdWIiOiI0MiIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjo0MTAyNDQ0ODAwfQ."
    "h2NeCLWrh_eZSqpFa7BNWXapIDt6QfzhpS03EcPEYyM";
/* header { "typ": "JWT", "alg": "HS256" },
 * claims {"exp": 1700003600, "sub": 9007199254740993, "iat": 1700000000} */
static const char py_spaced[] =
    "eyAidHlwIjogIkpXVCIsICJhbGciOiAiSFMyNTYiIH0."
    "eyJleHAiOiAxNzAwMDAzNjAwLCAic3ViIjogOTAwNzE5OTI1NDc0MDk5MywgImlhdCI6IDE3MDAwMDAwMDB9."
    "mEXucBi1urtGgziH-ptDsWWR8FqFvQ-eDhCRVi91gD8";
/* header {"alg":"HS512","typ":"JWT"}, a valid HMAC-SHA512 signature */
static const char py_hs512[] =
    "eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9."
    "eyJzdWIiOiI0MiIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjo0MTAyNDQ0ODAwfQ."
    "Ick6VmjaNg8gOKa7aMwkaOaxWipzdq8U_eL0lWgpjjzUcdolupHZWjYkUuEoIfDgLKO3BayTXgSgDbqDLbDRXQ";
/* header {"alg":"hs256","typ":"JWT"}, a valid HMAC-SHA256 signature */
static const char py_lower[] =
    "eyJhbGciOiJoczI1NiIsInR5cCI6IkpXVCJ9."
    "eyJzdWIiOiI0MiIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjo0MTAyNDQ0ODAwfQ."
    "51EBggQjMP5BDYKiig7jsOO_otGjTaHzdn9YVIEWoWY";
/* header {"alg":"none"}, empty signature */
static const char py_none[] =
    "eyJhbGciOiJub25lIn0."
    "eyJzdWIiOiI0MiIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjo0MTAyNDQ0ODAwfQ.";

/* base64url of n bytes through OpenSSL's encoder, not the one under test. */
static void b64url(const void *in, size_t n, char *out)
{
    int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    while (len > 0 && out[len - 1] == '=')
        out[--len] = '\0';
    for (char *p = out; *p; p++)
        *p = *p == '+' ? '-' : *p == '/' ? '_' : *p;
}

/* A token with any header and claims text, correctly signed with key: lets the tests
 * reach the claim checks, which only run after the signature is good. */
static char *make_token(const char *header, const char *claims, const char *key)
{
    char *t = malloc(8192);
    b64url(header, strlen(header), t);
    strcat(t, ".");
    b64url(claims, strlen(claims), t + strlen(t));
    unsigned char mac[32];
    unsigned int maclen = 0;
    HMAC(EVP_sha256(), key, (int)strlen(key), (unsigned char *)t, strlen(t), mac, &maclen);
    strcat(t, ".");
    b64url(mac, maclen, t + strlen(t));
    return t;
}

/* Verifies with SECRET at NOW; returns the status and leaves the reason in err. */
static int verify(const char *token, int64_t *sub, char *err, size_t errlen)
{
    err[0] = '\0';
    return jwt_verify(SECRET, SECRET_LEN, token, NOW, sub, err, errlen);
}

static void assert_refused(const char *token, const char *reason)
{
    char err[256];
    int64_t sub = -7;
    assert_int_equal(verify(token, &sub, err, sizeof err), CHORUS_ERR);
    if (!strstr(err, reason))
        fprintf(stderr, "want reason '%s', got '%s'\n", reason, err);
    assert_non_null(strstr(err, reason));
    assert_int_equal(sub, -7); /* untouched on failure */
}

static void assert_claims_refused(const char *claims, const char *reason)
{
    char *t = make_token("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", claims, SECRET);
    assert_refused(t, reason);
    free(t);
}

/* A signed token verifies and yields its subject. */
static void test_roundtrip(void **state)
{
    (void)state;
    char tok[256], err[128];
    int64_t sub = 0;
    assert_int_equal(jwt_sign(SECRET, SECRET_LEN, 123456789012345LL, NOW, NOW + 3600, tok,
                              sizeof tok),
                     CHORUS_OK);
    assert_int_equal(verify(tok, &sub, err, sizeof err), CHORUS_OK);
    assert_int_equal(sub, 123456789012345LL);
    assert_int_equal(jwt_sign(SECRET, SECRET_LEN, INT64_MAX, NOW, NOW + 1, tok, sizeof tok),
                     CHORUS_OK);
    assert_int_equal(verify(tok, &sub, err, sizeof err), CHORUS_OK);
    assert_int_equal(sub, INT64_MAX);
}

/* jwt_sign writes the same bytes as Python does, and tokens from Python verify: proves
 * interop with another implementation, not just agreement with ourselves. */
static void test_interop(void **state)
{
    (void)state;
    char tok[256], err[128];
    int64_t sub = 0;
    assert_int_equal(jwt_sign(SECRET, SECRET_LEN, 42, 1700000000, 4102444800LL, tok, sizeof tok),
                     CHORUS_OK);
    assert_string_equal(tok, py_std);
    assert_int_equal(verify(py_std, &sub, err, sizeof err), CHORUS_OK);
    assert_int_equal(sub, 42);
    /* Reordered, spaced header and claims; sub as a JSON integer past 2^53. */
    assert_int_equal(verify(py_spaced, &sub, err, sizeof err), CHORUS_OK);
    assert_int_equal(sub, 9007199254740993LL);
}

/* jwt_sign refuses what jwt_verify would refuse, and a buffer too small. */
static void test_sign_bad_input(void **state)
{
    (void)state;
    char tok[256];
    assert_int_equal(jwt_sign(SECRET, SECRET_LEN, 0, NOW, NOW + 1, tok, sizeof tok), CHORUS_ERR);
    assert_int_equal(jwt_sign(SECRET, SECRET_LEN, -1, NOW, NOW + 1, tok, sizeof tok), CHORUS_ERR);
    assert_int_equal(jwt_sign(SECRET, 0, 1, NOW, NOW + 1, tok, sizeof tok), CHORUS_ERR);
    assert_int_equal(jwt_sign(SECRET, SECRET_LEN, 1, NOW, NOW + 1, tok, 100), CHORUS_ERR);
}

/* Changing one character of the claims breaks the signature. */
static void test_tampered_payload(void **state)
{
    (void)state;
    char tok[256];
    jwt_sign(SECRET, SECRET_LEN, 42, NOW, NOW + 3600, tok, sizeof tok);
    /* Swap the claims for the ones of user 43, keep the signature of user 42. */
    char other[256];
    jwt_sign(SECRET, SECRET_LEN, 43, NOW, NOW + 3600, other, sizeof other);
    char forged[512];
    const char *sig = strrchr(tok, '.');
    size_t head = (size_t)(strrchr(other, '.') - other);
    snprintf(forged, sizeof forged, "%.*s%s", (int)head, other, sig);
    assert_refused(forged, "bad signature");
    /* Flip one bit of one claims character. */
    char *dot = strchr(tok, '.');
    dot[5] ^= 1;
    assert_refused(tok, "");
}

/* A changed, truncated, extended or missing signature is refused. */
static void test_tampered_signature(void **state)
{
    (void)state;
    char tok[256], t[300];
    jwt_sign(SECRET, SECRET_LEN, 42, NOW, NOW + 3600, tok, sizeof tok);
    size_t n = strlen(tok);
    strcpy(t, tok);
    t[n - 2] = t[n - 2] == 'A' ? 'B' : 'A';
    assert_refused(t, "bad signature");
    strcpy(t, tok);
    t[n - 1] = '\0';
    assert_refused(t, "bad signature");
    snprintf(t, sizeof t, "%sAAAA", tok);
    assert_refused(t, "bad signature");
    strcpy(t, tok);
    strrchr(t, '.')[1] = '\0';
    assert_refused(t, "bad signature");
    /* 43 characters carry 258 bits: the last character must leave the 2 spare bits at
     * zero, or one signature would have several spellings. Python's last char is 'M'
     * (001100); 'N' is the same 32 bytes plus a spare bit. */
    strcpy(t, py_std);
    t[strlen(t) - 1] = 'N';
    assert_refused(t, "bad signature");
}

/* alg "none", "HS512" (with a valid HS512 signature) and "hs256" are all refused. */
static void test_alg(void **state)
{
    (void)state;
    assert_refused(py_none, "alg");
    assert_refused(py_hs512, "alg");
    assert_refused(py_lower, "alg");
    char *t = make_token("{\"typ\":\"JWT\"}", "{\"sub\":\"1\",\"exp\":4102444800}", SECRET);
    assert_refused(t, "alg");
    free(t);
    t = make_token("{\"alg\":[\"HS256\"]}", "{\"sub\":\"1\",\"exp\":4102444800}", SECRET);
    assert_refused(t, "alg");
    free(t);
    t = make_token("{\"alg\":\"HS256\",\"alg\":\"none\"}", "{\"sub\":\"1\",\"exp\":4102444800}",
                   SECRET);
    assert_refused(t, "header is not a JSON object");
    free(t);
    t = make_token("{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", "{\"sub\":\"1\",\"exp\":4102444800}",
                   SECRET);
    assert_refused(t, "crit");
    free(t);
    /* typ is not checked: missing or odd is fine. */
    char err[128];
    int64_t sub = 0;
    assert_int_equal(verify("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiIsImV4cCI6NDEwMjQ0NDgwMH0."
                            "Ci2J16stXTFrQh9FUvL2BR2iYq-cR_MzFsrmW_9nRlo",
                            &sub, err, sizeof err),
                     CHORUS_OK);
    t = make_token("{\"alg\":\"HS256\",\"typ\":\"at+jwt\"}", "{\"sub\":\"5\",\"exp\":4102444800}",
                   SECRET);
    assert_int_equal(verify(t, &sub, err, sizeof err), CHORUS_OK);
    assert_int_equal(sub, 5);
    free(t);
}

/* exp <= now is refused; one second before it is fine. */
static void test_expired(void **state)
{
    (void)state;
    char tok[256], err[128];
    int64_t sub = 0;
    jwt_sign(SECRET, SECRET_LEN, 42, NOW - 100, NOW, tok, sizeof tok);
    assert_refused(tok, "expired");
    assert_int_equal(jwt_verify(SECRET, SECRET_LEN, tok, NOW - 1, &sub, err, sizeof err),
                     CHORUS_OK);
    assert_claims_refused("{\"sub\":\"1\"}", "exp missing");
    assert_claims_refused("{\"sub\":\"1\",\"exp\":\"4102444800\"}", "exp is not an integer");
    assert_claims_refused("{\"sub\":\"1\",\"exp\":4102444800.5}", "exp is not an integer");
}

/* iat up to JWT_IAT_SKEW_S ahead is tolerated (clock skew); further is refused. */
static void test_iat_future(void **state)
{
    (void)state;
    char tok[256], err[128];
    int64_t sub = 0;
    jwt_sign(SECRET, SECRET_LEN, 42, NOW + JWT_IAT_SKEW_S, NOW + 3600, tok, sizeof tok);
    assert_int_equal(verify(tok, &sub, err, sizeof err), CHORUS_OK);
    jwt_sign(SECRET, SECRET_LEN, 42, NOW + JWT_IAT_SKEW_S + 1, NOW + 3600, tok, sizeof tok);
    assert_refused(tok, "iat");
    assert_claims_refused("{\"sub\":\"1\",\"exp\":4102444800,\"iat\":\"x\"}", "iat");
    assert_claims_refused("{\"sub\":\"1\",\"exp\":4102444800,\"nbf\":4102444000}", "nbf");
}

/* sub must be a positive integer, as a JSON integer or a canonical decimal string. */
static void test_sub(void **state)
{
    (void)state;
    assert_claims_refused("{\"exp\":4102444800}", "sub missing");
    static const char *const bad[] = {
        "\"\"", "\"0\"", "\"-5\"", "\"+5\"", "\"007\"", "\"12a\"", "\" 12\"", "\"1.5\"",
        "\"9223372036854775808\"", "\"99999999999999999999\"", "0", "-3", "1.5", "true",
        "null", "[1]", "{}", "\"4\\u00002\"",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char claims[128];
        snprintf(claims, sizeof claims, "{\"exp\":4102444800,\"sub\":%s}", bad[i]);
        char *t = make_token("{\"alg\":\"HS256\"}", claims, SECRET);
        char err[128];
        int64_t sub = 0;
        if (verify(t, &sub, err, sizeof err) != CHORUS_ERR)
            fprintf(stderr, "accepted sub %s\n", bad[i]);
        assert_int_not_equal(verify(t, &sub, err, sizeof err), CHORUS_OK);
        free(t);
    }
    assert_claims_refused("{\"exp\":4102444800,\"sub\":\"1\",\"sub\":\"2\"}",
                          "claims is not a JSON object");
}

/* A token signed with another secret is refused, as is any use of an empty secret. */
static void test_wrong_secret(void **state)
{
    (void)state;
    char tok[256], err[128];
    int64_t sub = 0;
    jwt_sign("another secret", 14, 42, NOW, NOW + 3600, tok, sizeof tok);
    assert_refused(tok, "bad signature");
    /* A secret that is a prefix of the right one is still wrong. */
    assert_int_equal(jwt_verify(SECRET, SECRET_LEN - 1, py_std, NOW, &sub, err, sizeof err),
                     CHORUS_ERR);
    assert_int_equal(jwt_verify(SECRET, 0, py_std, NOW, &sub, err, sizeof err), CHORUS_ERR);
}

/* The signature is checked before the claims are parsed: garbage claims with a bad
 * signature are reported as a bad signature, with a good one as bad claims. */
static void test_signature_first(void **state)
{
    (void)state;
    char *t = make_token("{\"alg\":\"HS256\"}", "not json", "wrong key");
    assert_refused(t, "bad signature");
    free(t);
    t = make_token("{\"alg\":\"HS256\"}", "not json", SECRET);
    assert_refused(t, "claims is not a JSON object");
    free(t);
    t = make_token("{\"alg\":\"HS256\"}", "[1,2]", SECRET);
    assert_refused(t, "claims is not a JSON object");
    free(t);
}

/* Inputs that are not tokens at all. */
static void test_malformed(void **state)
{
    (void)state;
    assert_refused("", "three");
    assert_refused("a.b", "three");
    assert_refused("abc", "three");
    assert_refused("a.b.c.d", "three");
    assert_refused("....", "three");
    assert_refused("..", "header is not a JSON object");
    assert_refused("!!!.b.c", "header is not base64url");
    assert_refused("eyJhbGciOiJIUzI1NiJ9=.e30.AAAA", "header is not base64url");
    assert_refused("eyJhbGciOiJIUzI1NiJ9 .e30.AAAA", "header is not base64url");
    assert_refused("e.e30.AAAA", "header is not base64url");
    assert_refused("bm90IGpzb24.e30.AAAA", "header is not a JSON object");
    assert_refused("eyJhbGciOiJIUzI1NiJ9.e30.***", "bad signature");
    /* 5000 bytes, otherwise shaped like a token. */
    char *big = malloc(5001);
    memset(big, 'A', 5000);
    big[10] = '.';
    big[20] = '.';
    big[5000] = '\0';
    assert_refused(big, "longer than 4096");
    /* Exactly at the limit is parsed (and fails later, on its header). */
    big[JWT_TOKEN_MAX] = '\0';
    assert_refused(big, "header");
    free(big);
    char err[64];
    int64_t sub;
    assert_int_equal(jwt_verify(SECRET, SECRET_LEN, NULL, NOW, &sub, err, sizeof err),
                     CHORUS_ERR);
    /* err may be NULL. */
    assert_int_equal(jwt_verify(SECRET, SECRET_LEN, "x", NOW, &sub, NULL, 0), CHORUS_ERR);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_interop),
        cmocka_unit_test(test_sign_bad_input),
        cmocka_unit_test(test_tampered_payload),
        cmocka_unit_test(test_tampered_signature),
        cmocka_unit_test(test_alg),
        cmocka_unit_test(test_expired),
        cmocka_unit_test(test_iat_future),
        cmocka_unit_test(test_sub),
        cmocka_unit_test(test_wrong_secret),
        cmocka_unit_test(test_signature_first),
        cmocka_unit_test(test_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
