/* jwt.c - HS256 JSON Web Tokens: strict base64url, OpenSSL HMAC, jansson claims. */
#include "chorus/jwt.h"

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "chorus/status.h"

/* Signed byte for byte as written: verifiers hash the encoded text, so the spelling of
 * the header is part of the token's identity and never reformatted. */
static const char jwt_header[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

#define MAC_LEN 32
/* Decoded parts of a token that fits JWT_TOKEN_MAX fit here. */
#define PART_MAX (JWT_TOKEN_MAX / 4 * 3 + 3)

static const char b64url_chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* ---- base64url (RFC 4648 section 5, no padding) ---- */

static size_t b64url_len(size_t n)
{
    return n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0);
}

/* Writes b64url_len(n) characters and a NUL; returns the number of characters. */
static size_t b64url_encode(const unsigned char *in, size_t n, char *out)
{
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 8) | in[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[o++] = b64url_chars[(acc >> bits) & 63];
        }
        acc &= (1u << bits) - 1;
    }
    if (bits)
        out[o++] = b64url_chars[(acc << (6 - bits)) & 63];
    out[o] = '\0';
    return o;
}

static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Decodes n characters into out (at most outmax bytes). Returns the byte count, or -1
 * for a character outside the alphabet, an impossible length or non-zero spare bits:
 * spare bits would let one signature be spelled several ways. */
static long b64url_decode(const char *in, size_t n, unsigned char *out, size_t outmax)
{
    if (n % 4 == 1 || n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0) > outmax)
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_value((unsigned char)in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
        acc &= (1u << bits) - 1;
    }
    return acc == 0 ? (long)o : -1;
}

/* ---- signing ---- */

static int hs256(const char *secret, size_t secret_len, const char *data, size_t n,
                 unsigned char mac[MAC_LEN])
{
    unsigned int maclen = 0;
    if (!HMAC(EVP_sha256(), secret, (int)secret_len, (const unsigned char *)data, n, mac,
              &maclen))
        return CHORUS_ERR;
    return maclen == MAC_LEN ? CHORUS_OK : CHORUS_ERR;
}

static bool secret_usable(const char *secret, size_t secret_len)
{
    return secret && secret_len > 0 && secret_len <= INT_MAX;
}

/* Compact JSON claims into out; returns the length or 0 when it does not fit. sub is a
 * string because JSON numbers past 2^53 lose precision in JavaScript clients. */
static size_t claims_json(int64_t sub, int64_t iat, int64_t exp, char *out, size_t outlen)
{
    char subtext[24];
    snprintf(subtext, sizeof subtext, "%lld", (long long)sub);
    json_t *c = json_pack("{s:s,s:I,s:I}", "sub", subtext, "iat", (json_int_t)iat, "exp",
                          (json_int_t)exp);
    if (!c)
        return 0;
    size_t n = json_dumpb(c, out, outlen, JSON_COMPACT);
    json_decref(c);
    return n <= outlen ? n : 0;
}

int jwt_sign(const char *secret, size_t secret_len, int64_t sub, int64_t iat, int64_t exp,
             char *out, size_t outlen)
{
    if (!secret_usable(secret, secret_len) || sub <= 0 || !out)
        return CHORUS_ERR;
    char claims[128];
    size_t clen = claims_json(sub, iat, exp, claims, sizeof claims);
    if (clen == 0)
        return CHORUS_ERR;
    size_t hlen = sizeof jwt_header - 1;
    if (b64url_len(hlen) + 1 + b64url_len(clen) + 1 + b64url_len(MAC_LEN) + 1 > outlen)
        return CHORUS_ERR;
    size_t n = b64url_encode((const unsigned char *)jwt_header, hlen, out);
    out[n++] = '.';
    n += b64url_encode((const unsigned char *)claims, clen, out + n);
    unsigned char mac[MAC_LEN];
    if (hs256(secret, secret_len, out, n, mac) != CHORUS_OK)
        return CHORUS_ERR;
    out[n++] = '.';
    b64url_encode(mac, MAC_LEN, out + n);
    return CHORUS_OK;
}

/* ---- verification ---- */

/* Decodes one part and parses it as a JSON object (duplicate keys refused: two "alg"
 * or two "sub" members would mean different things to different parsers). */
static json_t *part_object(const char *p, size_t n, const char *what, char *err,
                           size_t errlen)
{
    unsigned char raw[PART_MAX];
    long len = b64url_decode(p, n, raw, sizeof raw);
    if (len < 0) {
        chorus_set_err(err, errlen, "%s is not base64url", what);
        return NULL;
    }
    json_t *j = json_loadb((const char *)raw, (size_t)len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(j)) {
        json_decref(j);
        chorus_set_err(err, errlen, "%s is not a JSON object", what);
        return NULL;
    }
    return j;
}

static bool string_is(const json_t *j, const char *want)
{
    return json_is_string(j) && json_string_length(j) == strlen(want) &&
           strcmp(json_string_value(j), want) == 0;
}

static int check_header(const char *p, size_t n, char *err, size_t errlen)
{
    json_t *h = part_object(p, n, "header", err, errlen);
    if (!h)
        return CHORUS_ERR;
    int rc = CHORUS_ERR;
    if (!string_is(json_object_get(h, "alg"), "HS256"))
        chorus_set_err(err, errlen, "alg is not HS256");
    /* RFC 7515 4.1.11: a critical extension we do not implement must be refused. */
    else if (json_object_get(h, "crit"))
        chorus_set_err(err, errlen, "crit header not supported");
    else
        rc = CHORUS_OK;
    json_decref(h);
    return rc;
}

/* signed_part is "header.claims"; sig is the third part, still encoded. */
static int check_signature(const char *secret, size_t secret_len, const char *signed_part,
                           size_t signed_len, const char *sig, size_t sig_len, char *err,
                           size_t errlen)
{
    unsigned char got[MAC_LEN + 3], want[MAC_LEN];
    if (b64url_decode(sig, sig_len, got, sizeof got) != MAC_LEN ||
        hs256(secret, secret_len, signed_part, signed_len, want) != CHORUS_OK ||
        CRYPTO_memcmp(got, want, MAC_LEN) != 0) {
        chorus_set_err(err, errlen, "bad signature");
        return CHORUS_ERR;
    }
    return CHORUS_OK;
}

/* A positive id from 1..19 digits without sign or leading zero, checked for overflow. */
static bool parse_id(const char *s, size_t n, int64_t *out)
{
    if (n == 0 || n > 19 || s[0] == '0')
        return false;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        int d = s[i] - '0';
        if (v > (INT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

static bool parse_sub(const json_t *j, int64_t *out)
{
    if (json_is_integer(j) && json_integer_value(j) > 0) {
        *out = json_integer_value(j);
        return true;
    }
    return json_is_string(j) && parse_id(json_string_value(j), json_string_length(j), out);
}

/* True when t is more than JWT_IAT_SKEW_S after now, without signed overflow. */
static bool too_far_ahead(int64_t t, int64_t now)
{
    return t > now && (uint64_t)t - (uint64_t)now > JWT_IAT_SKEW_S;
}

static int check_claims(const json_t *c, int64_t now, int64_t *sub_out, char *err,
                        size_t errlen)
{
    const json_t *exp = json_object_get(c, "exp");
    const json_t *iat = json_object_get(c, "iat");
    const json_t *nbf = json_object_get(c, "nbf");
    int64_t sub;
    if (!exp)
        chorus_set_err(err, errlen, "exp missing");
    else if (!json_is_integer(exp))
        chorus_set_err(err, errlen, "exp is not an integer");
    else if (json_integer_value(exp) <= now)
        chorus_set_err(err, errlen, "token expired");
    else if (iat && (!json_is_integer(iat) || too_far_ahead(json_integer_value(iat), now)))
        chorus_set_err(err, errlen, "iat is not an integer or in the future");
    else if (nbf && (!json_is_integer(nbf) || too_far_ahead(json_integer_value(nbf), now)))
        chorus_set_err(err, errlen, "nbf is not an integer or in the future");
    else if (!json_object_get(c, "sub"))
        chorus_set_err(err, errlen, "sub missing");
    else if (!parse_sub(json_object_get(c, "sub"), &sub))
        chorus_set_err(err, errlen, "sub is not a positive integer");
    else {
        *sub_out = sub;
        return CHORUS_OK;
    }
    return CHORUS_ERR;
}

int jwt_verify(const char *secret, size_t secret_len, const char *token, int64_t now,
               int64_t *sub_out, char *err, size_t errlen)
{
    if (!secret_usable(secret, secret_len) || !token || !sub_out) {
        chorus_set_err(err, errlen, "no secret or no token");
        return CHORUS_ERR;
    }
    size_t len = strnlen(token, JWT_TOKEN_MAX + 1);
    if (len > JWT_TOKEN_MAX) {
        chorus_set_err(err, errlen, "token longer than %d bytes", JWT_TOKEN_MAX);
        return CHORUS_ERR;
    }
    const char *dot1 = memchr(token, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
    const char *sig = dot2 ? dot2 + 1 : NULL;
    if (!dot2 || memchr(sig, '.', len - (size_t)(sig - token))) {
        chorus_set_err(err, errlen, "token is not three dot-separated parts");
        return CHORUS_ERR;
    }
    if (check_header(token, (size_t)(dot1 - token), err, errlen) != CHORUS_OK ||
        check_signature(secret, secret_len, token, (size_t)(dot2 - token), sig,
                        len - (size_t)(sig - token), err, errlen) != CHORUS_OK)
        return CHORUS_ERR;
    json_t *claims = part_object(dot1 + 1, (size_t)(dot2 - dot1 - 1), "claims", err, errlen);
    if (!claims)
        return CHORUS_ERR;
    int rc = check_claims(claims, now, sub_out, err, errlen);
    json_decref(claims);
    return rc;
}
