/* wss_recent.c - the recent-event buffer of one channel on a node.
 *
 * A ring of the last events the node read for the channel, as the frames it already
 * built, so a client that reconnects a moment later resumes from memory instead of
 * Postgres. It answers only for an unbroken run of seqs: an event that does not follow
 * the last one (the reader lost entries to MAXLEN, or joined the stream late) starts
 * the run again, and a position before the run's first seq goes to Postgres.
 */
#include <stdlib.h>

#include "wss_internal.h"

static size_t item_bytes(const wss_recent_item *it)
{
    return (it->json ? it->json->len : 0) + (it->msgpack ? it->msgpack->len : 0);
}

wss_recent_item *wss_recent_at(wss_recent *r, int i)
{
    return &r->items[(r->start + i) % r->cap];
}

int64_t wss_recent_last(const wss_recent *r)
{
    return r->n ? r->items[(r->start + r->n - 1) % r->cap].seq : 0;
}

bool wss_recent_drop_oldest(wss_recent *r, size_t *bytes)
{
    if (r->n == 0)
        return false;
    wss_recent_item *it = &r->items[r->start];
    *bytes -= item_bytes(it);
    wss_frame_unref(it->json);
    wss_frame_unref(it->msgpack);
    *it = (wss_recent_item){0};
    r->start = (r->start + 1) % r->cap;
    r->n--;
    return true;
}

void wss_recent_clear(wss_recent *r, size_t *bytes)
{
    while (wss_recent_drop_oldest(r, bytes))
        ;
    free(r->items);
    *r = (wss_recent){0};
}

void wss_recent_push(wss_recent *r, int cap, int64_t seq, wss_frame *json, wss_frame *msgpack,
                     size_t *bytes)
{
    if (cap <= 0 || (!json && !msgpack))
        return;
    if (r->n && seq != wss_recent_last(r) + 1)
        wss_recent_clear(r, bytes); /* a break in the run: it starts again here */
    if (!r->items) {
        r->items = calloc((size_t)cap, sizeof *r->items);
        if (!r->items)
            return;
        r->cap = cap;
    }
    if (r->n == r->cap)
        wss_recent_drop_oldest(r, bytes);
    wss_recent_item *it = &r->items[(r->start + r->n) % r->cap];
    *it = (wss_recent_item){seq, json, msgpack};
    if (json)
        json->refs++;
    if (msgpack)
        msgpack->refs++;
    *bytes += item_bytes(it);
    r->n++;
}

bool wss_recent_covers(const wss_recent *r, int64_t after)
{
    return r->n > 0 && r->items[r->start].seq <= after + 1;
}
