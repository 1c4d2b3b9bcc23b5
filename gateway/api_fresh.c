/* api_fresh.c - what the gateway knows from the event streams, so that a cached history
 * page can be served without asking Postgres (api_history.c).
 *
 * A cached page is exact while its channel's last_seq stands. The gateway reads every
 * channel stream and keeps, per channel, the highest seq it has seen; and per (user,
 * channel) the outcome of the last access check that Postgres answered. A page is
 * served from memory when
 *   - the reader is connected and has read every partition since before the answer
 *     that taught us the channel's seq (so every later event reaches us: none missed),
 *   - the page's seq equals the channel's known seq,
 *   - the channel took no write through this gateway in the last second (read your own
 *     writes: our own write is in the database before its event reaches the stream),
 *   - the caller's access to the channel was confirmed by Postgres in the last 10 s,
 *     and no event that can take access away (member.left, channel.updated/deleted,
 *     workspace.* user events) has been read since, nor any write made through this
 *     gateway (the epoch).
 * Otherwise the page is validated by Postgres as before, which also teaches us the seq
 * and the access. Across gateways a page can trail the database by the outbox lag
 * (milliseconds), as the WebSocket does. A reconnect of the reader forgets everything
 * (entries trimmed meanwhile would be missed).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_internal.h"
#include "chorus/log.h"
#include "chorus/metrics.h"
#include "chorus/rstream.h"
#include "chorus/status.h"

#define FR_BUCKETS 16384
#define FR_MAX_CHANNELS 200000
#define FR_MAX_ACCESS 200000
#define FR_ACCESS_TTL_S 10.0
#define FR_OWN_WRITE_S 1.0

typedef struct fr_chan {
    struct fr_chan *next;
    int64_t id;
    long long seq;
    double dirty_until;
} fr_chan;

typedef struct fr_access {
    struct fr_access *next;
    int64_t user, ch, ws;
    unsigned long epoch;
    double expires;
} fr_access;

struct fresh {
    api *x;
    rstream *reader;
    ev_timer starting;
    int subscribed;           /* partitions subscribed, of 2 x partitions */
    bool live;                /* every partition read since live_since */
    double live_since;
    unsigned connections;     /* the reader's, when live began */
    unsigned long epoch;
    fr_chan *chans[FR_BUCKETS];
    fr_access *access[FR_BUCKETS];
    size_t nchans, naccess;
};

/* ---- the maps ----------------------------------------------------------------------- */

static unsigned slot(int64_t a, int64_t b)
{
    return (unsigned)(((uint64_t)a * 0x9E3779B97F4A7C15ull ^ (uint64_t)b) % FR_BUCKETS);
}

static fr_chan *chan_get(fresh *f, int64_t ch, bool create)
{
    fr_chan **b = &f->chans[slot(ch, 0)];
    for (fr_chan *c = *b; c; c = c->next)
        if (c->id == ch)
            return c;
    fr_chan *c = create && f->nchans < FR_MAX_CHANNELS ? calloc(1, sizeof *c) : NULL;
    if (c) {
        c->id = ch;
        c->next = *b;
        *b = c;
        f->nchans++;
    }
    return c;
}

static fr_access *access_get(fresh *f, int64_t user, int64_t ch, bool create)
{
    fr_access **b = &f->access[slot(user, ch)];
    for (fr_access *a = *b; a; a = a->next)
        if (a->user == user && a->ch == ch)
            return a;
    fr_access *a = create && f->naccess < FR_MAX_ACCESS ? calloc(1, sizeof *a) : NULL;
    if (a) {
        a->user = user;
        a->ch = ch;
        a->next = *b;
        *b = a;
        f->naccess++;
    }
    return a;
}

static void forget(fresh *f)
{
    for (int i = 0; i < FR_BUCKETS; i++) {
        while (f->chans[i]) {
            fr_chan *c = f->chans[i];
            f->chans[i] = c->next;
            free(c);
        }
        while (f->access[i]) {
            fr_access *a = f->access[i];
            f->access[i] = a->next;
            free(a);
        }
    }
    f->nchans = f->naccess = 0;
    f->epoch++;
}

/* ---- the streams -------------------------------------------------------------------- */

static bool revokes(const char *type, bool user_stream)
{
    if (user_stream)
        return strcmp(type, "read.updated") != 0 && strcmp(type, "channel.created") != 0 &&
               strcmp(type, "member.joined") != 0;
    return strcmp(type, "member.left") == 0 || strcmp(type, "channel.updated") == 0 ||
           strcmp(type, "channel.deleted") == 0;
}

static void on_entry(void *arg, const char *key, const char *id, const chorus_event *ev)
{
    (void)id;
    fresh *f = arg;
    bool user_stream = strncmp(key, "chorus:u:", 9) == 0;
    if (revokes(ev->type, user_stream))
        f->epoch++;
    if (user_stream || ev->channel_id <= 0 || ev->seq <= 0)
        return;
    fr_chan *c = chan_get(f, ev->channel_id, false); /* only channels a read taught us */
    if (c && ev->seq > c->seq)
        c->seq = ev->seq;
}

static void on_live(void *arg, redisReply *reply)
{
    fresh *f = arg;
    if (!reply || reply->type == REDIS_REPLY_ERROR || !f->reader)
        return;
    f->live = true;
    f->live_since = ev_now(app_loop(f->x->app));
    f->connections = rstream_connections(f->reader);
    log_info("gateway: history pages are served from memory while they are fresh");
}

/* Subscribes every partition (Redis must answer first), then a PING behind the
 * XREVRANGEs that position them: from its answer on, nothing is missed. */
static void on_starting(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    fresh *f = t->data;
    int parts = f->x->partitions;
    while (f->subscribed < 2 * parts) {
        char key[RSTREAM_KEY_MAX];
        int p = f->subscribed % parts;
        snprintf(key, sizeof key, "chorus:%s:%d", f->subscribed < parts ? "ch" : "u", p);
        if (rstream_subscribe(f->reader, key, "$") != CHORUS_OK)
            return;
        f->subscribed++;
    }
    if (rclient_command(app_redis(f->x->app), on_live, f, "PING") == CHORUS_OK)
        ev_timer_stop(loop, t);
}

/* ---- the questions ------------------------------------------------------------------ */

bool fresh_page_ok(fresh *f, int64_t user, int64_t ws, int64_t ch, long long page_seq,
                   double now)
{
    if (!f || !f->live)
        return false;
    if (!rstream_connected(f->reader) || rstream_connections(f->reader) != f->connections) {
        forget(f); /* a gap in what we read: learn again from Postgres */
        f->live = false;
        rclient_command(app_redis(f->x->app), on_live, f, "PING");
        return false;
    }
    fr_chan *c = chan_get(f, ch, false);
    fr_access *a = access_get(f, user, ch, false);
    return c && a && c->seq == page_seq && now >= c->dirty_until && a->ws == ws &&
           a->epoch == f->epoch && now < a->expires;
}

unsigned long fresh_epoch(const fresh *f)
{
    return f ? f->epoch : 0;
}

void fresh_learn(fresh *f, int64_t user, int64_t ws, int64_t ch, long long last_seq,
                 double started, unsigned long epoch)
{
    if (!f || !f->live || started < f->live_since)
        return; /* asked before every partition was read: a later event may be missed */
    fr_chan *c = chan_get(f, ch, true);
    if (c && last_seq > c->seq)
        c->seq = last_seq;
    fr_access *a = epoch == f->epoch ? access_get(f, user, ch, true) : NULL;
    if (a) {
        a->ws = ws;
        a->epoch = epoch;
        a->expires = started + FR_ACCESS_TTL_S;
    }
}

void fresh_note_write(fresh *f, const char *method, int64_t ch, double now)
{
    if (!f)
        return;
    /* a DELETE or PATCH may take someone's access away (a member removed, a channel
     * made private or deleted); a POST or PUT only adds */
    if (strcmp(method, "DELETE") == 0 || strcmp(method, "PATCH") == 0)
        f->epoch++;
    fr_chan *c = ch > 0 ? chan_get(f, ch, false) : NULL;
    if (c)
        c->dirty_until = now + FR_OWN_WRITE_S;
}

fresh *fresh_new(api *x)
{
    fresh *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->x = x;
    rclient *control = app_redis(x->app);
    const chorus_config *cfg = app_config(x->app);
    rstream_opts o = {.url = cfg->redis_url, .name = "gateway", .control = control,
                      .block_ms = 1000, .max_streams = 2 * x->partitions,
                      .bell = cfg->stream_sweep_ms > 0 ? RSTREAM_BELL : NULL,
                      .sweep_ms = cfg->stream_sweep_ms};
    f->reader = control ? rstream_new(app_loop(x->app), &o, on_entry, f) : NULL;
    if (!f->reader) {
        free(f);
        return NULL;
    }
    ev_timer_init(&f->starting, on_starting, 0, 0.05);
    f->starting.data = f;
    ev_timer_start(app_loop(x->app), &f->starting);
    return f;
}

void fresh_stop(fresh *f)
{
    if (!f)
        return;
    ev_timer_stop(app_loop(f->x->app), &f->starting);
    rstream_free(f->reader); /* its connection must go for the loop to end */
    f->reader = NULL;
    f->live = false;
}

void fresh_free(fresh *f)
{
    if (!f)
        return;
    fresh_stop(f);
    forget(f);
    free(f);
}
