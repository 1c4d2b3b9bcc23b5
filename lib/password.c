/* password.c - scrypt password hashes in a self-describing string. */
#include "chorus/password.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "chorus/status.h"

#define SALT_LEN 16
#define KEY_LEN 32
#define SCRYPT_R 8
#define SCRYPT_P 1
/* scrypt needs 128 * r * N bytes; allow up to ln = 20 with room. */
#define SCRYPT_MAXMEM (1100ULL * 1024 * 1024)

static int b64(const unsigned char *in, int n, char *out, size_t outlen)
{
    if (outlen < (size_t)(4 * ((n + 2) / 3) + 1))
        return -1;
    int len = EVP_EncodeBlock((unsigned char *)out, in, n);
    while (len > 0 && out[len - 1] == '=')
        out[--len] = '\0';
    return len;
}

static int unb64(const char *in, unsigned char *out, int outmax)
{
    char padded[128];
    size_t n = strlen(in);
    if (n == 0 || n + 3 >= sizeof padded)
        return -1;
    memcpy(padded, in, n);
    while (n % 4)
        padded[n++] = '=';
    padded[n] = '\0';
    unsigned char tmp[96];
    int len = EVP_DecodeBlock(tmp, (unsigned char *)padded, (int)n);
    if (len < 0)
        return -1;
    len -= (int)(n - strlen(in)); /* padding bytes decode to zeros */
    if (len > outmax)
        return -1;
    memcpy(out, tmp, (size_t)len);
    return len;
}

static int derive(const char *password, const unsigned char *salt, size_t saltlen, int ln,
                  int r, int p, unsigned char key[KEY_LEN])
{
    return EVP_PBE_scrypt(password, strlen(password), salt, saltlen, 1ULL << ln,
                          (uint64_t)r, (uint64_t)p, SCRYPT_MAXMEM, key, KEY_LEN) == 1
               ? CHORUS_OK
               : CHORUS_ERR;
}

int password_hash(const char *password, int ln, char *out, size_t outlen)
{
    unsigned char salt[SALT_LEN], key[KEY_LEN];
    char salt64[32], key64[64];
    if (ln < 10 || ln > 20 || RAND_bytes(salt, sizeof salt) != 1)
        return CHORUS_ERR;
    if (derive(password, salt, sizeof salt, ln, SCRYPT_R, SCRYPT_P, key) != CHORUS_OK)
        return CHORUS_ERR;
    b64(salt, sizeof salt, salt64, sizeof salt64);
    b64(key, sizeof key, key64, sizeof key64);
    OPENSSL_cleanse(key, sizeof key);
    int n = snprintf(out, outlen, "$scrypt$ln=%d,r=%d,p=%d$%s$%s", ln, SCRYPT_R, SCRYPT_P,
                     salt64, key64);
    return n > 0 && (size_t)n < outlen ? CHORUS_OK : CHORUS_ERR;
}

bool password_verify(const char *password, const char *stored)
{
    int ln, r, p;
    char salt64[64], key64[96];
    if (sscanf(stored, "$scrypt$ln=%d,r=%d,p=%d$%63[^$]$%95s", &ln, &r, &p, salt64, key64) != 5)
        return false;
    if (ln < 10 || ln > 20 || r < 1 || r > 32 || p < 1 || p > 16)
        return false;
    unsigned char salt[48], want[64], got[KEY_LEN];
    int saltlen = unb64(salt64, salt, sizeof salt);
    int keylen = unb64(key64, want, sizeof want);
    if (saltlen <= 0 || keylen != KEY_LEN)
        return false;
    if (derive(password, salt, (size_t)saltlen, ln, r, p, got) != CHORUS_OK)
        return false;
    bool same = CRYPTO_memcmp(got, want, KEY_LEN) == 0;
    OPENSSL_cleanse(got, sizeof got);
    return same;
}
