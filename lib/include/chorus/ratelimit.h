/* ratelimit.h - token buckets per key (a user id, a hashed client address) in bounded
 * memory.
 *
 * Each key has a bucket of at most burst tokens refilled at rate tokens per second;
 * a request takes one token or is refused. An unseen key starts with a full bucket.
 *
 * Memory is fixed at creation: an open-addressing table of max_keys * 5/4 + 1 slots of
 * 24 bytes (30 bytes per key), never grown. When it is full and a new key arrives,
 * one entry is evicted: an entry whose bucket has refilled to burst
 * (forgetting it changes nothing: an absent key also starts full) if a sample of 16
 * finds one, else the sampled entry with the most tokens now. Evicting a bucket that
 * is not full gives its key at most burst tokens it would not have had; that only
 * happens when more than max_keys keys have each been active within the last
 * burst/rate seconds (the table is too small: see evicted_active), and choosing the
 * fullest bucket keeps keys that are being limited right now in the table.
 *
 * Keys are mixed with a per-table random seed, so clients choosing their keys (IPv6
 * addresses) cannot aim at one probe chain. Hash an address to an int64 with a keyed
 * or cryptographic hash: two addresses on one key share one bucket.
 *
 * Times are seconds on a clock that does not jump (CLOCK_MONOTONIC); a time earlier
 * than one already seen for a key counts as no time passing. Single-threaded.
 */
#ifndef CHORUS_RATELIMIT_H
#define CHORUS_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The largest max_keys accepted (a table of 480 MiB). */
#define RATELIMIT_MAX_KEYS (1u << 24)

typedef struct ratelimit ratelimit;

typedef struct ratelimit_stats {
    size_t keys;             /* entries in the table now (<= max_keys) */
    uint64_t evicted_idle;   /* full buckets dropped to make room: harmless */
    uint64_t evicted_active; /* non-full buckets dropped: the table is too small */
} ratelimit_stats;

/* Creates a limiter: rate tokens per second (0: no limit, every take succeeds and no
 * table is allocated), burst tokens at most (>= 1), at most max_keys keys
 * (1..RATELIMIT_MAX_KEYS). Returns NULL on bad arguments or out of memory. */
ratelimit *ratelimit_new(double rate, double burst, size_t max_keys);

/* Takes one token from key's bucket at time now. Returns true when allowed. When
 * refused, returns false and, if retry_after_s is not NULL, stores the seconds until
 * one token is available (> 0; round up for a Retry-After header); a refused request
 * takes nothing. When allowed *retry_after_s is 0. */
bool ratelimit_take(ratelimit *r, int64_t key, double now, double *retry_after_s);

/* Counters for metrics and tests. */
void ratelimit_get_stats(const ratelimit *r, ratelimit_stats *out);

/* Frees the limiter; NULL is a no-op. */
void ratelimit_free(ratelimit *r);

#endif
