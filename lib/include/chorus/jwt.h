/* jwt.h - JSON Web Tokens signed with HMAC-SHA256 (RFC 7519, JWS HS256 only).
 *
 * The one algorithm is fixed on purpose: the verifier never lets the token choose how
 * it is checked, so "alg":"none" and algorithm-confusion tokens are refused by
 * construction. Tokens are base64url without padding (RFC 7515 section 2), and the
 * decoder is strict (no padding, no whitespace, no non-zero spare bits), so one set of
 * bytes has exactly one token spelling.
 *
 * The secret is raw bytes; use at least 32 random bytes (RFC 7518 section 3.2 asks for
 * a key as long as the hash). An empty secret is refused.
 */
#ifndef CHORUS_JWT_H
#define CHORUS_JWT_H

#include <stddef.h>
#include <stdint.h>

/* The longest token jwt_verify accepts, in bytes (without the NUL). Ours are ~170. */
#define JWT_TOKEN_MAX 4096

/* How far in the future "iat" may be before a token is refused (clock skew between
 * the nodes that sign and verify), in seconds. */
#define JWT_IAT_SKEW_S 60

/* Writes a token for user sub into out: header {"alg":"HS256","typ":"JWT"}, claims
 * {"sub":"<sub in decimal>","iat":iat,"exp":exp} (times in Unix seconds). sub must be
 * positive. Returns CHORUS_OK, or CHORUS_ERR when sub <= 0, the secret is empty or out
 * is too small (256 bytes is always enough). */
int jwt_sign(const char *secret, size_t secret_len, int64_t sub, int64_t iat, int64_t exp,
             char *out, size_t outlen);

/* Checks token at time now (Unix seconds) and stores its user id in *sub_out.
 * Returns CHORUS_OK, or CHORUS_ERR with one line in err saying why: longer than
 * JWT_TOKEN_MAX, not three base64url parts, header not a JSON object, "alg" other than
 * exactly "HS256", a "crit" header (no extension is understood), wrong signature,
 * claims not a JSON object, "exp" missing, not an integer or <= now, "iat" not an
 * integer or more than JWT_IAT_SKEW_S after now, "nbf" (optional) the same, "sub"
 * missing or not a positive integer (a JSON integer or a decimal string without sign
 * or leading zeros).
 * "typ" is not checked. The signature is checked before any claim is parsed, so claims
 * from an unsigned source never reach the JSON parser. *sub_out is written only on
 * success. */
int jwt_verify(const char *secret, size_t secret_len, const char *token, int64_t now,
               int64_t *sub_out, char *err, size_t errlen);

#endif
