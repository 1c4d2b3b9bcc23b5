/* wss_fanout.c - from the channel streams to the node's sessions.
 *
 * The node keeps an index channel -> local sessions, and a reference count per channel
 * partition: the first session that needs a partition subscribes the node's stream
 * reader to chorus:ch:<p> (from "$": what happened before is the resume path's job), the
 * last one to leave unsubscribes it. Each event is serialised once per protocol and the
 * same frame is queued on every recipient. Repeats from the outbox worker (at-least-once)
 * are dropped by the channel's last delivered seq.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chorus/event.h"
#include "chorus/log.h"
#include "chorus/rstream.h"
#include "chorus/status.h"
#include "wss_internal.h"

#define NBUCKETS 4096

typedef struct chan {
    int64_t id;
    int64_t last_seq;     /* highest seq delivered on this node */
    wss_session **sessions;
    int n, cap;
    struct chan *next;
} chan;

struct wss_fanout {
    wss_node *node;
    double events;
    rstream *reader;
    chan *buckets[NBUCKETS];
    int *part_refs;       /* per channel partition */
    metrics_series *m_events, *m_deliveries, *m_dups;
};

static chan *chan_get(wss_fanout *f, int64_t id, bool create)
{
    chan **b = &f->buckets[(uint64_t)id % NBUCKETS];
    for (chan *c = *b; c; c = c->next)
        if (c->id == id)
            return c;
    if (!create)
        return NULL;
    chan *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->id = id;
    c->next = *b;
    *b = c;
    return c;
}

static void chan_drop(wss_fanout *f, chan *c)
{
    chan **p = &f->buckets[(uint64_t)c->id % NBUCKETS];
    while (*p != c)
        p = &(*p)->next;
    *p = c->next;
    free(c->sessions);
    free(c);
}

static void part_ref(wss_fanout *f, int64_t ch, int delta)
{
    int p = (int)(ch % f->node->cfg->partitions);
    f->part_refs[p] += delta;
    if (!f->reader)
        return; /* stopping */
    char key[RSTREAM_KEY_MAX];
    snprintf(key, sizeof key, "chorus:ch:%d", p);
    if (delta > 0 && f->part_refs[p] == 1) {
        if (rstream_subscribe(f->reader, key, "$") != CHORUS_OK)
            log_warn("wss: cannot subscribe %s (Redis down?): its events wait for resume",
                     key);
    } else if (delta < 0 && f->part_refs[p] == 0) {
        rstream_unsubscribe(f->reader, key);
    }
}

int wss_fanout_add(wss_fanout *f, int64_t ch, wss_session *s)
{
    chan *c = chan_get(f, ch, true);
    if (!c)
        return CHORUS_ERR;
    if (c->n == c->cap) {
        int cap = c->cap ? c->cap * 2 : 4;
        wss_session **ns = realloc(c->sessions, (size_t)cap * sizeof *ns);
        if (!ns)
            return CHORUS_ERR;
        c->sessions = ns;
        c->cap = cap;
    }
    c->sessions[c->n++] = s;
    if (c->n == 1)
        part_ref(f, ch, +1);
    return CHORUS_OK;
}

void wss_fanout_remove(wss_fanout *f, int64_t ch, wss_session *s)
{
    chan *c = chan_get(f, ch, false);
    if (!c)
        return;
    for (int i = 0; i < c->n; i++)
        if (c->sessions[i] == s) {
            c->sessions[i] = c->sessions[--c->n];
            break;
        }
    if (c->n == 0) {
        part_ref(f, ch, -1);
        chan_drop(f, c);
    }
}

/* The event as a frame of each protocol, built on first need. */
typedef struct frames {
    const chorus_event *ev;
    wss_frame *json, *msgpack;
} frames;

static wss_frame *frame_for(frames *fr, bool msgpack)
{
    wss_frame **slot = msgpack ? &fr->msgpack : &fr->json;
    if (*slot)
        return *slot;
    json_t *j = event_to_frame_json(fr->ev);
    if (!j)
        return NULL;
    *slot = wss_frame_encode(j, msgpack);
    json_decref(j);
    return *slot;
}

static void on_entry(void *arg, const char *key, const char *id, const chorus_event *ev)
{
    (void)key;
    (void)id;
    wss_fanout *f = arg;
    metrics_inc(f->m_events);
    f->events++;
    if (ev->channel_id <= 0)
        return; /* user events: live membership, a later step */
    chan *c = chan_get(f, ev->channel_id, false);
    if (!c)
        return;
    if (ev->seq <= c->last_seq) {
        metrics_inc(f->m_dups);
        return;
    }
    c->last_seq = ev->seq;
    frames fr = {ev, NULL, NULL};
    for (int i = 0; i < c->n; i++) {
        wss_frame *frame = frame_for(&fr, wss_session_is_msgpack(c->sessions[i]));
        if (frame) {
            wss_session_deliver(c->sessions[i], ev->channel_id, ev->seq, frame);
            metrics_inc(f->m_deliveries);
        }
    }
    wss_frame_unref(fr.json);
    wss_frame_unref(fr.msgpack);
}

wss_fanout *wss_fanout_new(wss_node *node)
{
    wss_fanout *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->node = node;
    f->part_refs = calloc((size_t)node->cfg->partitions, sizeof *f->part_refs);
    rclient *control = app_redis(node->app);
    rstream_opts o = {.url = node->cfg->redis_url, .name = "wss", .control = control,
                      .block_ms = 1000, .max_streams = node->cfg->partitions * 2};
    f->reader = f->part_refs && control ? rstream_new(app_loop(node->app), &o, on_entry, f)
                                        : NULL;
    if (!f->reader) {
        wss_fanout_free(f);
        return NULL;
    }
    f->m_events = metrics_counter("chorus_wss_stream_events_total",
                                  "events read from the streams");
    f->m_deliveries = metrics_counter("chorus_wss_deliveries_total",
                                      "events queued to sessions (one per recipient)");
    f->m_dups = metrics_counter("chorus_wss_duplicate_events_total",
                                "events dropped as repeats of a delivered (channel, seq)");
    return f;
}

void wss_fanout_stop(wss_fanout *f)
{
    if (!f)
        return;
    rstream_free(f->reader); /* its connection must go for the loop to end */
    f->reader = NULL;
}

void wss_fanout_free(wss_fanout *f)
{
    if (!f)
        return;
    wss_fanout_stop(f);
    for (int i = 0; i < NBUCKETS; i++)
        while (f->buckets[i])
            chan_drop(f, f->buckets[i]);
    free(f->part_refs);
    free(f);
}

double wss_fanout_events(const wss_fanout *f)
{
    return f ? f->events : 0;
}
