/* wss_fanout.c - from the streams to the node's sessions.
 *
 * Channel streams. The node keeps an index channel -> local sessions, and a reference
 * count per channel partition: the first session that needs a partition subscribes the
 * node's stream reader to chorus:ch:<p> from its current end; the last one to leave
 * unsubscribes it. Each event is serialised once per protocol and the same frame is
 * queued on every recipient and kept in the channel's recent-event buffer (resume from
 * memory). Repeats from the outbox worker (at-least-once) are dropped by the channel's
 * last seq on the node, and per session by the highest seq it has of the channel (a
 * resume may have sent an event before the stream brought it).
 *
 * User streams. Every chorus:u:<p> is read from the node's start: membership changes
 * must reach a session from the instant it exists, and a node with a few thousand users
 * has most user partitions anyway. Their events go to wss_live.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chorus/log.h"
#include "chorus/rstream.h"
#include "chorus/status.h"
#include "wss_internal.h"

#define NBUCKETS 4096
#define USER_PREFIX "chorus:u:"
#define EPH_PREFIX "chorus:eph:"
#define PRESENCE_KEY "chorus:presence"

typedef struct member {
    wss_session *s;
    int64_t seen;         /* the highest seq of the channel the session has */
} member;

typedef struct chan {
    int64_t id;
    int64_t last_seq;     /* highest seq read on this node */
    member *members;
    int n, cap;
    wss_recent recent;
    struct chan *next;
} chan;

/* The sessions of one user, or of one workspace. */
typedef struct keyed {
    int64_t id;
    wss_session **sessions;
    int n, cap;
    struct keyed *next;
} keyed;

struct wss_fanout {
    wss_node *node;
    double events;
    rstream *reader;
    chan *chans[NBUCKETS];
    keyed *users[NBUCKETS];
    keyed *watchers[NBUCKETS];   /* user -> sessions that asked for their presence */
    int *part_refs;       /* per channel partition */
    int parts_used;       /* partitions with part_refs > 0 */
    size_t recent_bytes;  /* what every channel's recent-event buffer holds */
    int users_subscribed; /* user partitions read so far: all of them before sessions */
    bool presence_subscribed;
    metrics_series *m_events, *m_deliveries, *m_dups, *m_partitions, *m_repairs;
};

/* ---- the index ---------------------------------------------------------------------- */

static chan *chan_get(wss_fanout *f, int64_t id, bool create)
{
    chan **b = &f->chans[(uint64_t)id % NBUCKETS];
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
    chan **p = &f->chans[(uint64_t)c->id % NBUCKETS];
    while (*p != c)
        p = &(*p)->next;
    *p = c->next;
    wss_recent_clear(&c->recent, &f->recent_bytes);
    free(c->members);
    free(c);
}

static member *member_of(chan *c, const wss_session *s)
{
    for (int i = 0; c && i < c->n; i++)
        if (c->members[i].s == s)
            return &c->members[i];
    return NULL;
}

static void part_keys(int p, char *key, char *eph)
{
    snprintf(key, RSTREAM_KEY_MAX, "chorus:ch:%d", p);
    snprintf(eph, RSTREAM_KEY_MAX, EPH_PREFIX "%d", p); /* typing in the same channels */
}

static void part_ref(wss_fanout *f, int64_t ch, int delta)
{
    int p = (int)(ch % f->node->cfg->partitions);
    f->part_refs[p] += delta;
    if (!f->reader)
        return; /* stopping */
    char key[RSTREAM_KEY_MAX], eph[RSTREAM_KEY_MAX];
    part_keys(p, key, eph);
    if (delta > 0 && f->part_refs[p] == 1) {
        metrics_inc(f->m_partitions);
        f->parts_used++;
        /* Without Redis this fails: wss_fanout_repair subscribes it once Redis is back */
        if (rstream_subscribe(f->reader, key, "$") != CHORUS_OK)
            log_warn("wss: cannot subscribe %s now (Redis down?): retried every second", key);
        rstream_subscribe(f->reader, eph, "$");
    } else if (delta < 0 && f->part_refs[p] == 0) {
        metrics_add(f->m_partitions, -1);
        f->parts_used--;
        rstream_unsubscribe(f->reader, key);
        rstream_unsubscribe(f->reader, eph);
    }
}

/* A session that was greeted and has had nothing of the channel, and is not about to
 * resume: it has no position to catch up from, and it may have missed events. */
static bool unplaced(const wss_session *s)
{
    return s->greeted && !s->awaiting && !s->resuming && !s->resume_later;
}

/* The members of the partition's channels get what they missed from the outbox: the
 * partition is read only from now on. A member resuming meanwhile catches up once its
 * resume ends, from where that left it. A member with no position in the channel cannot
 * be caught up: it is closed with 1013, and its client reconnects and resumes or pages
 * the history (it used to get the next event past a gap; the 100k load test saw 100 such
 * sessions a partition). One not greeted yet needs nothing: its hello comes after. */
static void part_catch_up(wss_fanout *f, int p, const char *key)
{
    int caught = 0, closed = 0;
    for (int b = 0; b < NBUCKETS; b++)
        for (chan *c = f->chans[b]; c; c = c->next)
            for (int i = 0; c->id % f->node->cfg->partitions == p && i < c->n; i++) {
                member *m = &c->members[i];
                /* One whose resume is under way has no position yet, but its answer
                 * may predate what the partition missed: it catches up after it (two
                 * 100k load runs lost seqs so, to sessions resuming from 0). */
                if (m->seen > 0 || m->s->resuming) {
                    wss_resume_catchup(m->s, c->id, m->seen);
                    caught++;
                } else if (unplaced(m->s)) {
                    wss_session_close(m->s, WSS_CLOSE_TRY_AGAIN, "missed events: reconnect");
                    closed++;
                }
            }
    log_warn("wss: %s subscribed again; %d sessions catch up from the outbox, %d with no "
             "position closed with 1013", key, caught, closed);
}

/* A partition in use can be missing from the reader: its subscription failed (Redis
 * was down when its first session came) or its "$" could not be resolved. Its sessions
 * would then get no live event of those channels, silently, until they reconnect. Once a
 * second, while the reader has fewer streams than the partitions in use need, the
 * missing ones are subscribed again and their members caught up. */
void wss_fanout_repair(wss_fanout *f)
{
    if (!f || !f->reader || !rstream_connected(f->reader))
        return;
    size_t need = (size_t)f->users_subscribed + f->presence_subscribed +
                  2 * (size_t)f->parts_used; /* a channel and a typing stream each */
    if (rstream_count(f->reader) >= need)
        return;
    if (f->presence_subscribed && !rstream_subscribed(f->reader, PRESENCE_KEY))
        rstream_subscribe(f->reader, PRESENCE_KEY, "$");
    for (int p = 0; p < f->users_subscribed; p++) { /* lost the same way */
        char key[RSTREAM_KEY_MAX];
        snprintf(key, sizeof key, USER_PREFIX "%d", p);
        if (!rstream_subscribed(f->reader, key) &&
            rstream_subscribe(f->reader, key, "$") == CHORUS_OK)
            log_warn("wss: %s subscribed again", key);
    }
    for (int p = 0; p < f->node->cfg->partitions; p++) {
        char key[RSTREAM_KEY_MAX], eph[RSTREAM_KEY_MAX];
        part_keys(p, key, eph);
        if (f->part_refs[p] <= 0)
            continue;
        rstream_subscribe(f->reader, eph, "$"); /* typing: nothing to catch up */
        if (rstream_subscribed(f->reader, key) ||
            rstream_subscribe(f->reader, key, "$") != CHORUS_OK)
            continue;
        metrics_inc(f->m_repairs);
        part_catch_up(f, p, key);
    }
}

int wss_fanout_add(wss_fanout *f, int64_t ch, wss_session *s, int64_t seen_seq)
{
    chan *c = chan_get(f, ch, true);
    if (!c)
        return CHORUS_ERR;
    if (c->n == c->cap) {
        int cap = c->cap ? c->cap * 2 : 4;
        member *nm = realloc(c->members, (size_t)cap * sizeof *nm);
        if (!nm) {
            if (c->n == 0)
                chan_drop(f, c);
            return CHORUS_ERR;
        }
        c->members = nm;
        c->cap = cap;
    }
    c->members[c->n++] = (member){s, seen_seq};
    if (c->n == 1)
        part_ref(f, ch, +1);
    return CHORUS_OK;
}

void wss_fanout_remove(wss_fanout *f, int64_t ch, wss_session *s)
{
    chan *c = chan_get(f, ch, false);
    member *m = member_of(c, s);
    if (!m)
        return;
    *m = c->members[--c->n];
    if (c->n == 0) {
        part_ref(f, ch, -1);
        chan_drop(f, c);
    }
}

int64_t wss_fanout_seen(wss_fanout *f, int64_t ch, const wss_session *s)
{
    member *m = member_of(chan_get(f, ch, false), s);
    return m ? m->seen : 0;
}

void wss_fanout_set_seen(wss_fanout *f, int64_t ch, const wss_session *s, int64_t seq)
{
    member *m = member_of(chan_get(f, ch, false), s);
    if (m && seq > m->seen)
        m->seen = seq;
}

wss_session **wss_fanout_channel_sessions(wss_fanout *f, int64_t ch, int *n)
{
    chan *c = chan_get(f, ch, false);
    *n = 0;
    wss_session **out = c && c->n ? malloc((size_t)c->n * sizeof *out) : NULL;
    for (int i = 0; out && i < c->n; i++)
        out[(*n)++] = c->members[i].s;
    return out;
}

/* ---- sessions by user, and by the users whose presence they watch ---------------------------------------------- */

static keyed *keyed_get(keyed **map, int64_t id, bool create)
{
    keyed **b = &map[(uint64_t)id % NBUCKETS];
    for (keyed *k = *b; k; k = k->next)
        if (k->id == id)
            return k;
    keyed *k = create ? calloc(1, sizeof *k) : NULL;
    if (k) {
        k->id = id;
        k->next = *b;
        *b = k;
    }
    return k;
}

static int keyed_add(keyed **map, int64_t id, wss_session *s)
{
    keyed *k = keyed_get(map, id, true);
    if (!k)
        return CHORUS_ERR;
    if (k->n == k->cap) {
        int cap = k->cap ? k->cap * 2 : 2;
        wss_session **ns = realloc(k->sessions, (size_t)cap * sizeof *ns);
        if (!ns)
            return CHORUS_ERR; /* an empty entry goes with the next remove of its key */
        k->sessions = ns;
        k->cap = cap;
    }
    k->sessions[k->n++] = s;
    return CHORUS_OK;
}

static void keyed_remove(keyed **map, int64_t id, wss_session *s)
{
    keyed *k = keyed_get(map, id, false);
    for (int i = 0; k && i < k->n; i++)
        if (k->sessions[i] == s) {
            k->sessions[i] = k->sessions[--k->n];
            break;
        }
    if (!k || k->n > 0)
        return;
    keyed **p = &map[(uint64_t)k->id % NBUCKETS];
    while (*p != k)
        p = &(*p)->next;
    *p = k->next;
    free(k->sessions);
    free(k);
}

static void keyed_free(keyed **map)
{
    for (int i = 0; i < NBUCKETS; i++)
        while (map[i]) {
            keyed *k = map[i];
            map[i] = k->next;
            free(k->sessions);
            free(k);
        }
}

int wss_fanout_add_user(wss_fanout *f, wss_session *s)
{
    return keyed_add(f->users, s->user_id, s);
}

void wss_fanout_remove_user(wss_fanout *f, wss_session *s)
{
    keyed_remove(f->users, s->user_id, s);
}

wss_session *const *wss_fanout_user_sessions(wss_fanout *f, int64_t id, int *n)
{
    keyed *k = keyed_get(f->users, id, false);
    *n = k ? k->n : 0;
    return k ? k->sessions : NULL;
}

int wss_fanout_watch(wss_fanout *f, int64_t user, wss_session *s)
{
    return keyed_add(f->watchers, user, s);
}

void wss_fanout_unwatch(wss_fanout *f, int64_t user, wss_session *s)
{
    keyed_remove(f->watchers, user, s);
}

wss_session *const *wss_fanout_watchers(wss_fanout *f, int64_t user, int *n)
{
    keyed *k = keyed_get(f->watchers, user, false);
    *n = k ? k->n : 0;
    return k ? k->sessions : NULL;
}

/* ---- delivery ----------------------------------------------------------------------- */

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
    if (*slot)
        (*slot)->created_us = fr->ev->created_at_us;
    json_decref(j);
    return *slot;
}

/* Keeps the event in the channel's buffer, within the node's byte budget: the channel
 * that grows gives up its own oldest events first. */
static void remember(wss_fanout *f, chan *c, int64_t seq, frames *fr)
{
    const chorus_config *cfg = f->node->cfg;
    wss_recent_push(&c->recent, cfg->wss_recent_events, seq, fr->json, fr->msgpack,
                    &f->recent_bytes);
    while (f->recent_bytes > (size_t)cfg->wss_recent_bytes &&
           wss_recent_drop_oldest(&c->recent, &f->recent_bytes))
        ;
}

static void on_channel_event(wss_fanout *f, const chorus_event *ev)
{
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
        member *m = &c->members[i];
        wss_frame *frame = frame_for(&fr, wss_session_is_msgpack(m->s));
        if (frame) {
            wss_session_deliver(m->s, ev->channel_id, ev->seq, frame, &m->seen);
            metrics_inc(f->m_deliveries);
        }
    }
    remember(f, c, ev->seq, &fr);
    wss_frame_unref(fr.json);
    wss_frame_unref(fr.msgpack);
    if (strcmp(ev->type, "channel.deleted") == 0)
        wss_live_channel_deleted(f->node, ev->channel_id);
}

static void on_entry(void *arg, const char *key, const char *id, const chorus_event *ev)
{
    (void)id;
    wss_fanout *f = arg;
    metrics_inc(f->m_events);
    f->events++;
    if (strncmp(key, USER_PREFIX, strlen(USER_PREFIX)) == 0)
        wss_live_user_event(f->node, atoi(key + strlen(USER_PREFIX)), ev);
    else if (strncmp(key, EPH_PREFIX, strlen(EPH_PREFIX)) == 0)
        wss_eph_typing_event(f->node, ev);
    else if (strcmp(key, PRESENCE_KEY) == 0)
        wss_eph_presence_event(f->node, ev);
    else if (ev->channel_id > 0 && ev->seq > 0)
        on_channel_event(f, ev);
}

bool wss_fanout_resume(wss_fanout *f, int64_t ch, int64_t after, wss_session *s)
{
    chan *c = chan_get(f, ch, false);
    if (!c || !wss_recent_covers(&c->recent, after))
        return false;
    bool mp = wss_session_is_msgpack(s);
    for (int i = 0; i < c->recent.n; i++) {
        wss_recent_item *it = wss_recent_at(&c->recent, i);
        if (it->seq <= after)
            continue;
        wss_frame **slot = mp ? &it->msgpack : &it->json;
        if (!*slot) { /* only the other protocol's sessions had it: convert once */
            *slot = wss_frame_convert(mp ? it->json : it->msgpack);
            f->recent_bytes += *slot ? (*slot)->len : 0;
        }
        if (!*slot)
            return false; /* out of memory: Postgres answers instead */
        wss_session_send_seq(s, ch, it->seq, *slot);
    }
    return true;
}

/* ---- the barrier -------------------------------------------------------------------- */

bool wss_fanout_resolving(const wss_fanout *f)
{
    return f && f->reader && rstream_unresolved(f->reader) > 0;
}

typedef struct barrier {
    void (*cb)(void *arg, bool ok);
    void *arg;
} barrier;

static void on_barrier(void *arg, redisReply *reply)
{
    barrier b = *(barrier *)arg;
    free(arg);
    b.cb(b.arg, reply && reply->type != REDIS_REPLY_ERROR);
}

/* rstream resolves "$" with an XREVRANGE on the control client; replies come in order,
 * so once a PING sent after them answers, every subscription has its position. */
int wss_fanout_barrier(wss_fanout *f, void (*cb)(void *arg, bool ok), void *arg)
{
    rclient *control = app_redis(f->node->app);
    barrier *b = control ? malloc(sizeof *b) : NULL;
    if (!b)
        return CHORUS_ERR;
    *b = (barrier){cb, arg};
    int rc = rclient_command(control, on_barrier, b, "PING");
    if (rc != CHORUS_OK)
        free(b);
    return rc;
}

/* ---- the node's reader -------------------------------------------------------------- */

/* Until Redis answers, "$" cannot be resolved: the node calls again (wss.c) and takes
 * no session before every user partition is read. */
bool wss_fanout_ready(wss_fanout *f)
{
    while (f->reader && f->users_subscribed < f->node->cfg->partitions) {
        char key[RSTREAM_KEY_MAX];
        snprintf(key, sizeof key, USER_PREFIX "%d", f->users_subscribed);
        if (rstream_subscribe(f->reader, key, "$") != CHORUS_OK)
            return false;
        f->users_subscribed++;
    }
    if (f->reader && !f->presence_subscribed)
        f->presence_subscribed = rstream_subscribe(f->reader, PRESENCE_KEY, "$") == CHORUS_OK;
    return f->reader && f->presence_subscribed;
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
                      .block_ms = 1000, .max_streams = node->cfg->partitions * 3 + 1,
                      .gap_ms = node->cfg->wss_read_gap_ms,
                      .bell = node->cfg->stream_sweep_ms > 0 ? RSTREAM_BELL : NULL,
                      .sweep_ms = node->cfg->stream_sweep_ms};
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
    f->m_partitions = metrics_gauge("chorus_wss_channel_partitions",
                                    "channel stream partitions the node reads");
    f->m_repairs = metrics_counter("chorus_wss_partition_repairs_total",
                                   "channel partitions subscribed again after a failure");
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
        while (f->chans[i])
            chan_drop(f, f->chans[i]);
    keyed_free(f->users);
    keyed_free(f->watchers);
    free(f->part_refs);
    free(f);
}

double wss_fanout_events(const wss_fanout *f)
{
    return f ? f->events : 0;
}
