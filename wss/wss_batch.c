/* wss_batch.c - requests that one query answers together (wss_batch.h). */
#include "wss_batch.h"

#include <stdlib.h>

struct wss_batcher {
    struct ev_loop *loop;
    wss_batcher_opts o;
    wss_batch *filling;            /* NULL when nothing waits to be batched */
    wss_batch *full_head, *full_tail;
    int nfull, inflight;
    bool freed;                    /* freed with queries out: the last done frees it */
    ev_prepare flush;
};

static void batch_free(wss_batch *b)
{
    free(b->items);
    free(b);
}

static void fail_batch(wss_batcher *q, wss_batch *b, const char *why)
{
    q->o.fail(q->o.ctx, b, why);
    batch_free(b);
}

/* The oldest full batch, else the one filling. */
static wss_batch *next_batch(wss_batcher *q)
{
    wss_batch *b = q->full_head;
    if (b) {
        q->full_head = b->next;
        if (!q->full_head)
            q->full_tail = NULL;
        q->nfull--;
    } else {
        b = q->filling;
        q->filling = NULL;
    }
    return b;
}

/* Sends what waits while a query slot is free; done starts the watcher again. */
static void on_flush(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)revents;
    wss_batcher *q = w->data;
    wss_batch *b;
    while (q->inflight < q->o.inflight_max && (b = next_batch(q)) != NULL) {
        if (b->n > 0 && q->o.send(q->o.ctx, b)) /* empty: an add ran out of memory */
            q->inflight++;
        else
            batch_free(b);
    }
    ev_prepare_stop(loop, w);
}

wss_batcher *wss_batcher_new(struct ev_loop *loop, const wss_batcher_opts *o)
{
    wss_batcher *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    q->loop = loop;
    q->o = *o;
    ev_prepare_init(&q->flush, on_flush);
    q->flush.data = q;
    return q;
}

/* The filling batch goes in line, or fails past waiting_max. */
static void close_filling(wss_batcher *q)
{
    wss_batch *b = q->filling;
    q->filling = NULL;
    if (q->nfull >= q->o.waiting_max) {
        fail_batch(q, b, q->o.overflow_why);
        return;
    }
    b->next = NULL;
    if (q->full_tail)
        q->full_tail->next = b;
    else
        q->full_head = b;
    q->full_tail = b;
    q->nfull++;
}

bool wss_batcher_add(wss_batcher *q, void *item, int weight)
{
    if (q->filling && q->filling->weight + weight > q->o.max_weight)
        close_filling(q);
    if (!q->filling && !(q->filling = calloc(1, sizeof *q->filling)))
        return false;
    wss_batch *b = q->filling;
    b->q = q;
    if (b->n == b->cap) {
        int cap = b->cap ? 2 * b->cap : 16;
        void **items = realloc(b->items, (size_t)cap * sizeof *items);
        if (!items)
            return false;
        b->items = items;
        b->cap = cap;
    }
    b->items[b->n++] = item;
    b->weight += weight;
    if (b->weight >= q->o.max_weight)
        close_filling(q);
    ev_prepare_start(q->loop, &q->flush);
    return true;
}

void wss_batcher_done(wss_batch *b)
{
    wss_batcher *q = b->q;
    batch_free(b);
    q->inflight--; /* after the answers: one of them may have freed the owner */
    if (q->freed) {
        if (q->inflight == 0)
            free(q);
        return;
    }
    if (q->filling || q->full_head) /* a slot is free: the next batch goes out */
        ev_prepare_start(q->loop, &q->flush);
}

void wss_batcher_stop(wss_batcher *q, const char *why)
{
    if (!q)
        return;
    ev_prepare_stop(q->loop, &q->flush);
    wss_batch *b;
    while ((b = next_batch(q)) != NULL)
        fail_batch(q, b, why);
}

void wss_batcher_free(wss_batcher *q, const char *why)
{
    if (!q)
        return;
    wss_batcher_stop(q, why);
    if (q->inflight > 0)
        q->freed = true;
    else
        free(q);
}
