/* wss_batch.h - requests that one query answers together (channel lists of new
 * sessions, resumes), so that a storm of them is not one query each behind the pool.
 *
 * Requests added in one loop iteration gather into a batch of up to max_weight (a
 * request weighs what it adds to the query: one user, or its channels); the batch goes
 * out just before the loop waits (ev_prepare), so a quiet node adds no delay. At most
 * inflight_max queries are out at once; meanwhile full batches wait in a FIFO of at
 * most waiting_max, and a batch that would go past it fails as a whole. */
#ifndef CHORUS_WSS_BATCH_H
#define CHORUS_WSS_BATCH_H

#include <stdbool.h>

#include <ev.h>

typedef struct wss_batch {
    struct wss_batch *next;
    struct wss_batcher *q;
    void **items; /* in the order they came */
    int n, cap, weight;
} wss_batch;

typedef struct wss_batcher_opts {
    int max_weight, inflight_max, waiting_max;
    /* Starts b's query: true when its answer will end with wss_batcher_done(b); false
     * when it answered every item as failed already (the query was refused). */
    bool (*send)(void *ctx, wss_batch *b);
    /* Answers every item of b as failed, for why. */
    void (*fail)(void *ctx, wss_batch *b, const char *why);
    void *ctx;
    const char *overflow_why; /* what fail gets past waiting_max */
} wss_batcher_opts;

typedef struct wss_batcher wss_batcher;

wss_batcher *wss_batcher_new(struct ev_loop *loop, const wss_batcher_opts *o);
/* Queues item (fail may answer it at once, when its batch overflows the line); false
 * when out of memory: the item is not taken. */
bool wss_batcher_add(wss_batcher *q, void *item, int weight);
/* b's query answered and its items were answered: frees b, sends what waits. */
void wss_batcher_done(wss_batch *b);
/* Fails what waits (why); queries out still end with wss_batcher_done. */
void wss_batcher_stop(wss_batcher *q, const char *why);
/* wss_batcher_stop, then frees q now or with the last wss_batcher_done. */
void wss_batcher_free(wss_batcher *q, const char *why);

#endif
