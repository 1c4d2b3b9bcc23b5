/* password.h - password hashing with scrypt (OpenSSL EVP_PBE_scrypt).
 *
 * Hashes are self-describing strings "$scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt>$<hash>"
 * (salt and hash in unpadded base64), so the cost can be raised later without
 * invalidating stored hashes. Verification compares in constant time.
 * Both calls cost ~100 ms of CPU and 128 MiB of memory by design: never call them on
 * the event loop thread.
 */
#ifndef CHORUS_PASSWORD_H
#define CHORUS_PASSWORD_H

#include <stdbool.h>
#include <stddef.h>

/* The default cost: N = 2^17, r = 8, p = 1 (OWASP's minimum for scrypt). */
#define PASSWORD_SCRYPT_LN 17

/* Writes the hash of password into out (at least 128 bytes). ln is log2 N (10..20);
 * tests use a small value. Returns CHORUS_OK or CHORUS_ERR. */
int password_hash(const char *password, int ln, char *out, size_t outlen);

/* True when password matches the stored hash; false for a wrong password or a
 * malformed hash. */
bool password_verify(const char *password, const char *stored);

#endif
