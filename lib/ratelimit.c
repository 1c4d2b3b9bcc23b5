/* ratelimit.c - token buckets in a fixed open-addressing table (linear probing,
 * backward-shift deletion, sampled eviction). */
#include "chorus/ratelimit.h"

#include <math.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>

/* Entries looked at per eviction. Redis samples 5 keys for its approximate LRU; more
 * samples find a full bucket more often and cost only a few cache lines, once per new
 * key and only when the table is full. */
#define EVICT_SAMPLE 16
/* Float rounding must not refuse a request made exactly retry_after seconds later. */
#define TOKEN_EPSILON 1e-9

/* An empty slot has tokens < 0 (a bucket never holds fewer than 0 tokens), which keeps
 * a slot at 24 bytes: no separate "used" flag to pad. */
typedef struct rl_entry {
    int64_t key;
    double tokens; /* at time last */
    double last;
} rl_entry;

struct ratelimit {
    double rate;
    double burst;
    size_t max_keys;
    size_t nslots;
    size_t count;
    rl_entry *slots;
    uint64_t seed; /* mixed into every key's hash */
    uint64_t rng;  /* picks where eviction samples start */
    uint64_t evicted_idle, evicted_active;
};

/* ---- table ---- */

static bool slot_used(const rl_entry *e)
{
    return e->tokens >= 0;
}

/* splitmix64's finaliser: a good spread for sequential ids. */
static uint64_t mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static size_t home_slot(const ratelimit *r, int64_t key)
{
    return (size_t)(mix((uint64_t)key ^ r->seed) % r->nslots);
}

static size_t next_slot(const ratelimit *r, size_t i)
{
    return i + 1 == r->nslots ? 0 : i + 1;
}

/* Steps from a forward to b, wrapping. */
static size_t distance(const ratelimit *r, size_t a, size_t b)
{
    return b >= a ? b - a : b + r->nslots - a;
}

/* The slot holding key, or the empty slot where it belongs. There is always an empty
 * slot (count <= max_keys < nslots), so the probe ends. */
static size_t slot_find(const ratelimit *r, int64_t key)
{
    size_t i = home_slot(r, key);
    while (slot_used(&r->slots[i]) && r->slots[i].key != key)
        i = next_slot(r, i);
    return i;
}

/* Backward-shift deletion: pulls later entries of the probe run into the hole, so
 * lookups never need tombstones and stay short after many evictions. */
static void slot_remove(ratelimit *r, size_t hole)
{
    for (size_t j = next_slot(r, hole); slot_used(&r->slots[j]); j = next_slot(r, j)) {
        size_t home = home_slot(r, r->slots[j].key);
        if (distance(r, home, j) >= distance(r, hole, j)) {
            r->slots[hole] = r->slots[j];
            hole = j;
        }
    }
    r->slots[hole].tokens = -1;
    r->count--;
}

/* ---- buckets ---- */

static double tokens_at(const ratelimit *r, const rl_entry *e, double now)
{
    double elapsed = now > e->last ? now - e->last : 0;
    return fmin(r->burst, e->tokens + elapsed * r->rate);
}

static uint64_t rng_next(ratelimit *r)
{
    uint64_t x = r->rng; /* xorshift64 */
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    r->rng = x;
    return x;
}

/* Drops one entry: the first full bucket among EVICT_SAMPLE entries from a random
 * slot, else the fullest of them (see ratelimit.h for why). */
static void evict_one(ratelimit *r, double now)
{
    size_t i = (size_t)(rng_next(r) % r->nslots);
    size_t best = r->nslots;
    double best_tokens = -1;
    for (int seen = 0; seen < EVICT_SAMPLE && seen < (int)r->count; i = next_slot(r, i)) {
        if (!slot_used(&r->slots[i]))
            continue;
        seen++;
        double t = tokens_at(r, &r->slots[i], now);
        if (t > best_tokens) {
            best = i;
            best_tokens = t;
        }
        if (t >= r->burst)
            break;
    }
    if (best_tokens >= r->burst)
        r->evicted_idle++;
    else
        r->evicted_active++;
    slot_remove(r, best);
}

ratelimit *ratelimit_new(double rate, double burst, size_t max_keys)
{
    if (!(rate >= 0) || !isfinite(rate))
        return NULL;
    ratelimit *r = calloc(1, sizeof *r);
    if (!r || rate == 0) /* unlimited: no table */
        return r;
    if (!(burst >= 1) || !isfinite(burst) || max_keys < 1 || max_keys > RATELIMIT_MAX_KEYS) {
        free(r);
        return NULL;
    }
    r->rate = rate;
    r->burst = burst;
    r->max_keys = max_keys;
    r->nslots = max_keys + max_keys / 4 + 1; /* load <= 0.8: probes stay short */
    r->slots = malloc(r->nslots * sizeof *r->slots);
    if (!r->slots) {
        free(r);
        return NULL;
    }
    for (size_t i = 0; i < r->nslots; i++)
        r->slots[i].tokens = -1;
    uint64_t seeds[2];
    if (getrandom(seeds, sizeof seeds, GRND_NONBLOCK) != (ssize_t)sizeof seeds) {
        seeds[0] = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)r;
        seeds[1] = mix(seeds[0]);
    }
    r->seed = seeds[0];
    r->rng = seeds[1] | 1; /* xorshift must not start at 0 */
    return r;
}

bool ratelimit_take(ratelimit *r, int64_t key, double now, double *retry_after_s)
{
    if (retry_after_s)
        *retry_after_s = 0;
    if (r->rate == 0)
        return true;
    size_t i = slot_find(r, key);
    if (!slot_used(&r->slots[i])) {
        if (r->count >= r->max_keys) {
            evict_one(r, now);
            i = slot_find(r, key); /* the removal may have moved entries */
        }
        r->slots[i] = (rl_entry){.key = key, .tokens = r->burst, .last = now};
        r->count++;
    }
    rl_entry *e = &r->slots[i];
    double t = tokens_at(r, e, now);
    if (now > e->last)
        e->last = now;
    if (t + TOKEN_EPSILON >= 1) {
        e->tokens = fmax(0, t - 1);
        return true;
    }
    e->tokens = t;
    if (retry_after_s)
        *retry_after_s = (1 - t) / r->rate;
    return false;
}

void ratelimit_get_stats(const ratelimit *r, ratelimit_stats *out)
{
    out->keys = r->count;
    out->evicted_idle = r->evicted_idle;
    out->evicted_active = r->evicted_active;
}

void ratelimit_free(ratelimit *r)
{
    if (!r)
        return;
    free(r->slots);
    free(r);
}
