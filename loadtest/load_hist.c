/* load_hist.c - a log-linear latency histogram: 32 buckets per power of two from 1 us,
 * so any quantile is within ~3 % of the truth, in a fixed 7 KiB that merges by adding. */
#include <string.h>

#include "load.h"

static int bucket(uint64_t us)
{
    if (us < HIST_SUB)
        return (int)us; /* the first power: one bucket per microsecond */
    int p = 63 - __builtin_clzll(us);           /* us in [2^p, 2^(p+1)) */
    int shift = p - 5;                          /* 32 sub-buckets: the next 5 bits */
    int sub = (int)((us >> shift) & (HIST_SUB - 1));
    int b = (p - 4) * HIST_SUB + sub;
    return b < HIST_N ? b : HIST_N - 1;
}

/* The largest value of bucket b. */
static uint64_t upper(int b)
{
    if (b < HIST_SUB)
        return (uint64_t)b;
    int p = b / HIST_SUB + 4, sub = b % HIST_SUB, shift = p - 5;
    return (((uint64_t)(HIST_SUB + sub) + 1) << shift) - 1;
}

void hist_add(hist *h, uint64_t us)
{
    h->count[bucket(us)]++;
    h->total++;
    if (us > h->max_us)
        h->max_us = us;
}

void hist_merge(hist *into, const hist *from)
{
    for (int i = 0; i < HIST_N; i++)
        into->count[i] += from->count[i];
    into->total += from->total;
    if (from->max_us > into->max_us)
        into->max_us = from->max_us;
}

uint64_t hist_quantile(const hist *h, double q)
{
    if (h->total == 0)
        return 0;
    uint64_t want = (uint64_t)(q * (double)h->total);
    if (want >= h->total)
        return h->max_us;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_N; i++) {
        seen += h->count[i];
        if (seen > want) {
            uint64_t u = upper(i);
            return u < h->max_us ? u : h->max_us;
        }
    }
    return h->max_us;
}

void hist_diff(hist *out, const hist *now, const hist *before)
{
    out->total = now->total - before->total;
    out->max_us = 0;
    for (int i = 0; i < HIST_N; i++) {
        out->count[i] = now->count[i] - before->count[i];
        if (out->count[i])
            out->max_us = upper(i); /* the exact max of the interval is not kept */
    }
    if (out->max_us > now->max_us)
        out->max_us = now->max_us;
}
