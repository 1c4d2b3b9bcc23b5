/* rstream.c - a changing set of Redis streams read with XREAD BLOCK (rstream.h).
 *
 * One read is in flight at a time on the reader's own connection. When it returns, its
 * entries are delivered and the next read is sent at once with the current set and
 * positions. A change of the set while a read blocks sets `dirty` and sends
 * CLIENT UNBLOCK <reader id> on the control client; the read returns empty and the next
 * one carries the new set. The reader's connection id is asked (CLIENT ID) after every
 * connect, before its first read.
 *
 * After a read that brought entries the next waits gap_ms (when set). Redis' cost of an
 * XREAD grows with its streams (a WSS node reads up to 3 x partitions + 1): blocking
 * and unblocking on each of them, then running the command again, took 400 us a read,
 * and a node read once per event, so Redis' load grew with nodes x events/s (at 500
 * events/s and 9 nodes, past a core). With the gap a read brings what came meanwhile,
 * mostly without blocking at all, for a few ms of latency.
 *
 * The doorbell (opts.bell) takes most of the rest away (in the 100k load test Redis'
 * XREAD time fell from 24 to 3.6 s a run): publishers add to the bell stream, after
 * their entries, one entry naming the streams they wrote (rstream.h). A reader with a
 * bell blocks on the bell alone, and then reads only the streams it named ("due") that
 * the reader follows, without BLOCK, so Redis reads them all at one instant:
 * a stream named in such a read is read up to that instant and is no longer due (unless
 * COUNT cut it short). The bell only decides when to read; positions stay per stream, so
 * a lost bell (a publisher that died between its entries and the bell, a bell trimmed
 * before it was read, a publisher without one) delays entries, never skips them: every
 * sweep_ms, and first after every connect, one read names every stream.
 *
 * Callbacks run with depth > 0; rstream_free inside one only marks the reader, and the
 * free happens when the outermost reply handler returns. Replies the rclient hands over
 * after the free began (NULL: it is closing) find `freeing` set and do nothing else.
 */
#include "chorus/rstream.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chorus/log.h"
#include "chorus/metrics.h"
#include "chorus/status.h"

typedef struct rs_sub {
    char key[RSTREAM_KEY_MAX];
    char id[RSTREAM_ID_MAX]; /* last delivered id; "" while "$" is being resolved */
    bool due;                /* bell: may hold entries past id; named in the next read */
    bool in_read;            /* named in the read in flight */
} rs_sub;

struct rstream {
    struct ev_loop *loop;
    char *name;
    rclient *reader;
    rclient *control;
    rstream_entry_cb cb;
    void *arg;
    int block_ms, count, max_streams;
    double gap_s, sweep_s;
    char *bell;            /* the doorbell's key; NULL: every read names every stream */
    char bell_id[RSTREAM_ID_MAX]; /* the last bell entry read; "" until resolved */
    bool bell_resolving;
    bool full;             /* the read in flight names every stream */
    ev_tstamp next_sweep;  /* bell: the first read at or after this names every stream */
    ev_timer gap;          /* the pause before the next read */
    rs_sub *subs;
    size_t nsubs;
    /* subs by key: open addressing, index + 1 (0 = empty), twice max_streams rounded up
     * to a power of two. A node follows ~770 streams and looks one up for every stream
     * a bell names and every stream of a reply: a linear search was 2 % of a core in the
     * 100k load test. */
    unsigned *slots;
    size_t nslots;
    long long client_id;   /* the reader connection's CLIENT ID; 0 = not known */
    bool reading;          /* an XREAD is in flight */
    bool dirty;            /* the set changed while it was */
    bool freeing;
    int depth;             /* reply handlers on the stack */
    int control_pending;   /* control-client replies still due (they point at us) */
    unsigned connections;  /* times the reader connection was (re)made */
    metrics_series *m_entries, *m_bad, *m_streams, *m_reads_full, *m_reads_bell;
};

static void rs_read(rstream *rs);
static void rs_changed(rstream *rs);

static size_t rs_hash(const char *key)
{
    size_t h = 14695981039346656037u; /* FNV-1a */
    for (; *key; key++)
        h = (h ^ (unsigned char)*key) * 1099511628211u;
    return h;
}

/* The slot holding key, or the empty one where it would go. */
static unsigned *rs_slot(const rstream *rs, const char *key)
{
    size_t mask = rs->nslots - 1;
    for (size_t i = rs_hash(key) & mask;; i = (i + 1) & mask) {
        unsigned *slot = &rs->slots[i];
        if (*slot == 0 || strcmp(rs->subs[*slot - 1].key, key) == 0)
            return slot;
    }
}

static rs_sub *rs_find(const rstream *rs, const char *key)
{
    unsigned *slot = rs_slot(rs, key);
    return *slot ? &rs->subs[*slot - 1] : NULL;
}

/* After a removal, which moves the last sub into the gap: subscriptions change rarely,
 * so the index is simply made again. */
static void rs_reindex(rstream *rs)
{
    memset(rs->slots, 0, rs->nslots * sizeof *rs->slots);
    for (size_t i = 0; i < rs->nsubs; i++)
        *rs_slot(rs, rs->subs[i].key) = (unsigned)i + 1;
}

static void rs_destroy(rstream *rs)
{
    ev_timer_stop(rs->loop, &rs->gap);
    rclient_free(rs->reader);
    free(rs->subs);
    free(rs->slots);
    free(rs->bell);
    free(rs->name);
    free(rs);
}

/* Frees a reader that rstream_free marked, once nothing of it is on the stack and no
 * reply of the control client still points at it. */
static bool rs_reap(rstream *rs)
{
    if (rs->freeing && rs->depth == 0 && rs->control_pending == 0) {
        rs_destroy(rs);
        return true;
    }
    return false;
}

/* ---- delivering a read --------------------------------------------------------- */

static void rs_deliver(rstream *rs, rs_sub *sub, const redisReply *entry)
{
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements != 2 ||
        entry->element[0]->type != REDIS_REPLY_STRING)
        return;
    const redisReply *id = entry->element[0], *fields = entry->element[1];
    if (id->len >= RSTREAM_ID_MAX)
        return;
    memcpy(sub->id, id->str, id->len);
    sub->id[id->len] = '\0';
    const redisReply *value = NULL;
    for (size_t i = 0; fields->type == REDIS_REPLY_ARRAY && i + 1 < fields->elements; i += 2)
        if (fields->element[i]->len == 1 && fields->element[i]->str[0] == 'e')
            value = fields->element[i + 1];
    chorus_event ev;
    char err[128] = "no field e";
    if (!value || value->type != REDIS_REPLY_STRING ||
        event_decode_msgpack(value->str, value->len, &ev, err, sizeof err) != CHORUS_OK) {
        metrics_inc(rs->m_bad);
        log_warn("rstream %s: %s entry %s skipped: %s", rs->name, sub->key, sub->id, err);
        return;
    }
    metrics_inc(rs->m_entries);
    char key[RSTREAM_KEY_MAX], idcopy[RSTREAM_ID_MAX];
    strcpy(key, sub->key); /* the callback may unsubscribe, moving sub */
    strcpy(idcopy, sub->id);
    rs->cb(rs->arg, key, idcopy, &ev);
    event_clear(&ev);
}

/* A bell entry: its field "k" names streams, space-separated. Those the reader follows
 * and did not name in this read are due. */
static void rs_ring(rstream *rs, const redisReply *entry)
{
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements != 2 ||
        entry->element[0]->type != REDIS_REPLY_STRING || entry->element[0]->len >= RSTREAM_ID_MAX)
        return;
    memcpy(rs->bell_id, entry->element[0]->str, entry->element[0]->len + 1);
    const redisReply *fields = entry->element[1];
    for (size_t i = 0; fields->type == REDIS_REPLY_ARRAY && i + 1 < fields->elements; i += 2) {
        const redisReply *f = fields->element[i], *v = fields->element[i + 1];
        if (f->type != REDIS_REPLY_STRING || f->len != 1 || f->str[0] != 'k' ||
            v->type != REDIS_REPLY_STRING)
            continue;
        const char *p = v->str, *end = v->str + v->len;
        while (p < end) {
            const char *sp = memchr(p, ' ', (size_t)(end - p));
            size_t n = (size_t)((sp ? sp : end) - p);
            char k[RSTREAM_KEY_MAX];
            if (n > 0 && n < sizeof k) {
                memcpy(k, p, n);
                k[n] = '\0';
                rs_sub *sub = rs_find(rs, k);
                if (sub && sub->id[0] && !sub->in_read)
                    sub->due = true;
            }
            p += n + 1;
        }
    }
}

/* One stream's part of an XREAD reply: [key, [entry, ...]]. Returns how many entries
 * it held. */
static size_t rs_deliver_stream(rstream *rs, const redisReply *part)
{
    if (part->type != REDIS_REPLY_ARRAY || part->elements != 2)
        return 0;
    const redisReply *key = part->element[0], *entries = part->element[1];
    if (key->type != REDIS_REPLY_STRING || entries->type != REDIS_REPLY_ARRAY)
        return 0;
    char k[RSTREAM_KEY_MAX];
    if (key->len >= sizeof k)
        return 0;
    memcpy(k, key->str, key->len);
    k[key->len] = '\0';
    if (rs->bell && strcmp(k, rs->bell) == 0) {
        for (size_t i = 0; i < entries->elements; i++)
            rs_ring(rs, entries->element[i]);
        return 0;
    }
    for (size_t i = 0; i < entries->elements && !rs->freeing; i++) {
        rs_sub *sub = rs_find(rs, k); /* again each time: the callback may unsubscribe */
        if (!sub)
            break;
        rs_deliver(rs, sub, entries->element[i]);
    }
    /* COUNT cut it short: there is more to read. */
    rs_sub *sub = rs->freeing ? NULL : rs_find(rs, k);
    if (sub && entries->elements >= (size_t)rs->count)
        sub->due = true;
    return entries->elements;
}

static void on_gap(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    rs_read(t->data);
}

static bool rs_any_due(const rstream *rs)
{
    for (size_t i = 0; i < rs->nsubs; i++)
        if (rs->subs[i].due && rs->subs[i].id[0])
            return true;
    return false;
}

static void on_read(void *arg, redisReply *reply)
{
    rstream *rs = arg;
    rs->reading = false;
    if (rs->freeing)
        return;
    rs->depth++;
    size_t data = 0;
    if (reply && reply->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i < reply->elements && !rs->freeing; i++)
            data += rs_deliver_stream(rs, reply->element[i]);
    else if (reply && reply->type == REDIS_REPLY_ERROR)
        log_warn("rstream %s: XREAD: %s", rs->name, reply->str);
    rs->depth--;
    if (rs_reap(rs))
        return;
    for (size_t i = 0; i < rs->nsubs; i++)
        rs->subs[i].in_read = false;
    /* NULL: the connection is gone; the state callback restarts reading. */
    if (!reply)
        return;
    bool brought = reply->type == REDIS_REPLY_ARRAY && reply->elements > 0;
    if (data == 0 && rs_any_due(rs)) {
        rs_read(rs); /* the bell named streams of ours: read them now */
    } else if (brought && rs->gap_s > 0) {
        ev_timer_set(&rs->gap, rs->gap_s, 0);
        ev_timer_start(rs->loop, &rs->gap);
    } else {
        rs_read(rs);
    }
}

/* ---- reading ---------------------------------------------------------------------- */

/* The id of an XREVRANGE key + - COUNT 1 answer: the stream's last entry, or "0-0" when
 * there is no stream yet (then everything that comes is new). */
static void rs_last_id(const redisReply *reply, char id[RSTREAM_ID_MAX])
{
    const redisReply *e = reply->elements ? reply->element[0] : NULL;
    if (e && e->type == REDIS_REPLY_ARRAY && e->elements == 2 &&
        e->element[0]->len < RSTREAM_ID_MAX)
        memcpy(id, e->element[0]->str, e->element[0]->len + 1);
    else
        strcpy(id, "0-0");
}

static void on_bell_resolved(void *arg, redisReply *reply)
{
    rstream *rs = arg;
    rs->control_pending--;
    rs->bell_resolving = false;
    if (rs_reap(rs) || rs->freeing)
        return;
    if (reply && reply->type == REDIS_REPLY_ARRAY) {
        rs_last_id(reply, rs->bell_id);
        /* A read blocked on every stream gives way to one on the bell. During a gap
         * there is none: the read after it takes the bell, and the gap holds (a read
         * at once would bring a node's first entries one by one). */
        if (!ev_is_active(&rs->gap))
            rs_changed(rs);
    }
    /* Not resolved: reads go on naming every stream, and the next one asks again. */
}

/* Finds where the bell ends now (XREVRANGE on the control client), as for "$". Until
 * then every read names every stream and blocks on them all, as without a bell. */
static void rs_resolve_bell(rstream *rs)
{
    if (rs->bell_resolving)
        return;
    if (rclient_command(rs->control, on_bell_resolved, rs, "XREVRANGE %s + - COUNT 1",
                        rs->bell) == CHORUS_OK) {
        rs->bell_resolving = true;
        rs->control_pending++;
    }
}

/* Which streams the next read names: every one (no bell, the bell not resolved yet, or
 * a sweep is due), else the due ones. Marks them in_read and no longer due. */
static size_t rs_pick(rstream *rs, bool full)
{
    size_t n = 0;
    for (size_t i = 0; i < rs->nsubs; i++) {
        rs_sub *sub = &rs->subs[i];
        sub->in_read = sub->id[0] != '\0' && (full || sub->due);
        if (sub->in_read) {
            sub->due = false;
            n++;
        }
    }
    return n;
}

/* BLOCK for a read: none when it names due streams (Redis then reads them all at one
 * instant, which is what lets them stop being due), else up to block_ms, and with a
 * bell not past the next sweep. -1: no BLOCK. */
static int rs_block_ms(const rstream *rs, bool with_bell, size_t named)
{
    if (!with_bell)
        return rs->block_ms;
    if (rs->full || named > 0)
        return -1;
    double left = (rs->next_sweep - ev_now(rs->loop)) * 1000.0;
    int ms = left < rs->block_ms ? (int)left + 1 : rs->block_ms;
    return ms > 0 ? ms : 1;
}

static void rs_read(rstream *rs)
{
    /* depth > 0: entries of the last read are still being delivered, and the positions
     * they move must be in the next read: on_read sends it when delivery is done. */
    if (rs->freeing || rs->reading || rs->depth > 0 || rs->client_id == 0 ||
        !rclient_connected(rs->reader))
        return;
    ev_timer_stop(rs->loop, &rs->gap); /* a change of the set reads at once */
    if (rs->bell && !rs->bell_id[0])
        rs_resolve_bell(rs);
    bool with_bell = rs->bell && rs->bell_id[0];
    rs->full = !with_bell || ev_now(rs->loop) >= rs->next_sweep;
    size_t n = rs_pick(rs, rs->full);
    if (n == 0 && !with_bell)
        return;
    int block = rs_block_ms(rs, with_bell, n);
    if (with_bell && rs->full)
        rs->next_sweep = ev_now(rs->loop) + rs->sweep_s;
    size_t argc = 4 + (block >= 0 ? 2 : 0) + 2 * (n + (with_bell ? 1 : 0));
    const char **argv = malloc(argc * sizeof *argv);
    if (!argv)
        return;
    char count[16], blockarg[16];
    snprintf(count, sizeof count, "%d", rs->count);
    snprintf(blockarg, sizeof blockarg, "%d", block);
    size_t a = 0;
    argv[a++] = "XREAD";
    argv[a++] = "COUNT";
    argv[a++] = count;
    if (block >= 0) {
        argv[a++] = "BLOCK";
        argv[a++] = blockarg;
    }
    argv[a++] = "STREAMS";
    if (with_bell)
        argv[a++] = rs->bell;
    for (size_t i = 0; i < rs->nsubs; i++)
        if (rs->subs[i].in_read)
            argv[a++] = rs->subs[i].key;
    if (with_bell)
        argv[a++] = rs->bell_id;
    for (size_t i = 0; i < rs->nsubs; i++)
        if (rs->subs[i].in_read)
            argv[a++] = rs->subs[i].id;
    rs->dirty = false;
    metrics_inc(rs->full ? rs->m_reads_full : rs->m_reads_bell);
    if (rclient_command_argv(rs->reader, on_read, rs, (int)argc, argv, NULL) == CHORUS_OK) {
        rs->reading = true;
    } else {
        for (size_t i = 0; i < rs->nsubs; i++)
            rs->subs[i].due |= rs->subs[i].in_read;
    }
    free(argv);
}

static void rs_unblock(rstream *rs);

static void on_unblocked(void *arg, redisReply *reply)
{
    rstream *rs = arg;
    rs->control_pending--;
    if (rs_reap(rs))
        return;
    /* 0: the read was not blocked yet (the UNBLOCK overtook it on the other connection)
     * or has returned already; if it is still out, try again. */
    if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer == 0 && rs->reading &&
        rs->dirty && !rs->freeing)
        rs_unblock(rs);
}

static void rs_unblock(rstream *rs)
{
    char id[24];
    snprintf(id, sizeof id, "%lld", rs->client_id);
    if (rclient_command(rs->control, on_unblocked, rs, "CLIENT UNBLOCK %s", id) == CHORUS_OK)
        rs->control_pending++;
}

/* The set changed: the next read must carry it. */
static void rs_changed(rstream *rs)
{
    metrics_set(rs->m_streams, (double)rs->nsubs);
    if (!rs->reading) {
        rs_read(rs);
        return;
    }
    if (rs->dirty || rs->client_id == 0)
        return;
    rs->dirty = true;
    rs_unblock(rs);
}

static void on_client_id(void *arg, redisReply *reply)
{
    rstream *rs = arg;
    if (rs->freeing || !reply || reply->type != REDIS_REPLY_INTEGER)
        return;
    rs->client_id = reply->integer;
    rs_read(rs);
}

static void on_reader_state(void *arg, bool connected)
{
    rstream *rs = arg;
    rs->client_id = 0;
    rs->reading = false;
    rs->next_sweep = 0; /* what came while it was away was not rung to us: read it all */
    rs->connections += connected;
    if (connected && !rs->freeing)
        rclient_command(rs->reader, on_client_id, rs, "CLIENT ID");
}

/* ---- subscriptions ---------------------------------------------------------------- */

typedef struct rs_resolve {
    rstream *rs;
    char key[RSTREAM_KEY_MAX];
} rs_resolve;

/* XREVRANGE key + - COUNT 1 answered: the subscription starts after that entry. */
static void on_resolved(void *arg, redisReply *reply)
{
    rs_resolve *r = arg;
    rstream *rs = r->rs;
    rs->control_pending--;
    rs_sub *sub = rs->freeing ? NULL : rs_find(rs, r->key);
    if (sub && sub->id[0] == '\0') {
        if (reply && reply->type == REDIS_REPLY_ARRAY) {
            rs_last_id(reply, sub->id);
            rs_changed(rs);
        } else { /* control client down: the stream's current end is unknown; drop it */
            log_warn("rstream %s: cannot resolve '$' of %s: unsubscribed", rs->name, r->key);
            rstream_unsubscribe(rs, r->key);
        }
    }
    free(r);
    rs_reap(rs);
}

static bool id_ok(const char *id)
{
    size_t n = strlen(id);
    return n > 0 && n < RSTREAM_ID_MAX && strspn(id, "0123456789-") == n;
}

int rstream_subscribe(rstream *rs, const char *key, const char *from_id)
{
    if (!rs || !key || !*key || strlen(key) >= RSTREAM_KEY_MAX || !from_id)
        return CHORUS_ERR;
    bool now = strcmp(from_id, "$") == 0;
    if (!now && !id_ok(from_id))
        return CHORUS_ERR;
    if (rs_find(rs, key))
        return CHORUS_OK;
    if (rs->nsubs >= (size_t)rs->max_streams)
        return CHORUS_AGAIN;
    rs_sub *sub = &rs->subs[rs->nsubs];
    snprintf(sub->key, sizeof sub->key, "%s", key);
    sub->id[0] = '\0';
    sub->due = true; /* the stream may hold entries past its start already */
    sub->in_read = false;
    if (now) {
        rs_resolve *r = malloc(sizeof *r);
        if (!r)
            return CHORUS_ERR;
        r->rs = rs;
        snprintf(r->key, sizeof r->key, "%s", key);
        int rc = rclient_command(rs->control, on_resolved, r, "XREVRANGE %s + - COUNT 1", key);
        if (rc != CHORUS_OK) {
            free(r);
            return rc;
        }
        rs->control_pending++;
        *rs_slot(rs, key) = (unsigned)++rs->nsubs;
        return CHORUS_OK; /* read once resolved */
    }
    snprintf(sub->id, sizeof sub->id, "%s", from_id);
    *rs_slot(rs, key) = (unsigned)++rs->nsubs;
    rs_changed(rs);
    return CHORUS_OK;
}

void rstream_unsubscribe(rstream *rs, const char *key)
{
    rs_sub *sub = rs && key ? rs_find(rs, key) : NULL;
    if (!sub)
        return;
    *sub = rs->subs[--rs->nsubs];
    rs_reindex(rs);
    rs_changed(rs);
}

bool rstream_connected(const rstream *rs)
{
    return rs && rclient_connected(rs->reader);
}

unsigned rstream_connections(const rstream *rs)
{
    return rs ? rs->connections : 0;
}

size_t rstream_count(const rstream *rs)
{
    return rs ? rs->nsubs : 0;
}

bool rstream_subscribed(const rstream *rs, const char *key)
{
    return rs && key && rs_find(rs, key) != NULL;
}

const char *rstream_position(const rstream *rs, const char *key)
{
    const rs_sub *sub = rs && key ? rs_find(rs, key) : NULL;
    return sub ? sub->id : "";
}

size_t rstream_unresolved(const rstream *rs)
{
    size_t n = 0;
    for (size_t i = 0; rs && i < rs->nsubs; i++)
        n += rs->subs[i].id[0] == '\0';
    return n;
}

/* ---- publishing ------------------------------------------------------------------- */

int rstream_ring(rclient *c, const char *keys, size_t len, rclient_cb cb, void *arg)
{
    const char *argv[] = {"XADD", RSTREAM_BELL, "MAXLEN", "~", RSTREAM_BELL_MAXLEN, "*", "k",
                          keys};
    size_t lens[] = {4, strlen(RSTREAM_BELL), 6, 1, strlen(RSTREAM_BELL_MAXLEN), 1, 1, len};
    return rclient_command_argv(c, cb, arg, 8, argv, lens);
}

/* ---- lifetime --------------------------------------------------------------------- */

rstream *rstream_new(struct ev_loop *loop, const rstream_opts *opts, rstream_entry_cb cb,
                     void *arg)
{
    if (!loop || !opts || !opts->url || !opts->name || !opts->control || !cb ||
        opts->block_ms < 0 || opts->count < 0 || opts->max_streams < 0)
        return NULL;
    rstream *rs = calloc(1, sizeof *rs);
    if (!rs)
        return NULL;
    rs->loop = loop;
    rs->control = opts->control;
    rs->cb = cb;
    rs->arg = arg;
    rs->block_ms = opts->block_ms ? opts->block_ms : 1000;
    rs->count = opts->count ? opts->count : 500;
    rs->max_streams = opts->max_streams ? opts->max_streams : 1024;
    rs->gap_s = opts->gap_ms > 0 ? opts->gap_ms / 1000.0 : 0;
    rs->sweep_s = opts->sweep_ms > 0 ? opts->sweep_ms / 1000.0 : 1.0;
    if (opts->bell && *opts->bell && strlen(opts->bell) < RSTREAM_KEY_MAX)
        rs->bell = strdup(opts->bell);
    ev_timer_init(&rs->gap, on_gap, 0, 0);
    rs->gap.data = rs;
    rs->name = strdup(opts->name);
    rs->subs = calloc((size_t)rs->max_streams, sizeof *rs->subs);
    for (rs->nslots = 2; rs->nslots < 2 * (size_t)rs->max_streams;)
        rs->nslots *= 2; /* half full at most: probes stay short */
    rs->slots = calloc(rs->nslots, sizeof *rs->slots);
    /* The watchdog must outlast a read that blocks for its whole BLOCK time. */
    rclient_opts ro = {.url = opts->url, .name = opts->name, .max_pending = 4,
                       .command_timeout_ms = rs->block_ms + 5000};
    bool bell_ok = !opts->bell || !*opts->bell || rs->bell;
    rs->reader = rs->name && rs->subs && rs->slots && bell_ok ? rclient_new(loop, &ro) : NULL;
    if (!rs->reader) {
        rs_destroy(rs);
        return NULL;
    }
    metrics_family *f = metrics_family_new(METRICS_COUNTER, "chorus_rstream_entries_total",
                                           "stream entries delivered", "reader", NULL, 0);
    rs->m_entries = metrics_with1(f, opts->name);
    f = metrics_family_new(METRICS_COUNTER, "chorus_rstream_bad_entries_total",
                           "stream entries skipped: not a decodable event", "reader", NULL, 0);
    rs->m_bad = metrics_with1(f, opts->name);
    f = metrics_family_new(METRICS_GAUGE, "chorus_rstream_streams", "streams subscribed",
                           "reader", NULL, 0);
    rs->m_streams = metrics_with1(f, opts->name);
    f = metrics_family_new(METRICS_COUNTER, "chorus_rstream_reads_total",
                           "XREADs sent: naming every stream (full) or the bell and the streams "
                           "it named (bell)",
                           "reader,kind", NULL, 0);
    rs->m_reads_full = metrics_with2(f, opts->name, "full");
    rs->m_reads_bell = metrics_with2(f, opts->name, "bell");
    rclient_on_state(rs->reader, on_reader_state, rs);
    return rs;
}

void rstream_free(rstream *rs)
{
    if (!rs || rs->freeing)
        return;
    rs->freeing = true;
    ev_timer_stop(rs->loop, &rs->gap);
    rclient_on_state(rs->reader, NULL, NULL);
    rs_reap(rs);
}
