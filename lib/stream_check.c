/* stream_check.c - `chorus check-streams`: is every channel's run of seqs on its
 * partition stream whole and in order? (docs/OPERATIONS.md)
 *
 * Reads every chorus:ch:<p> from the first entry to the last, 1,000 entries a request,
 * and follows each channel's seqs in stream order: an entry must be the next seq, or an
 * exact repeat of one already seen (the outbox publishes at least once). A channel's
 * first seq may be past 1 (MAXLEN trimmed the head; counted, not an error). A gap or a
 * seq below the channel's last that is not a repeat is an error, printed with the
 * entries around it. Exit status 0 when there is none, 1 otherwise, 2 when Redis cannot
 * be read. Nothing is written. Meant for a quiet moment (after a load test, say): a
 * stream still being published to can show its newest entries only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "app_internal.h"
#include "chorus/event.h"
#include "chorus/log.h"
#include "chorus/rclient.h"
#include "chorus/status.h"

#define PAGE 1000
#define TOLD_MAX 20

typedef struct chan_run {
    int64_t ch;      /* 0: an empty slot */
    int64_t first, last;
    int64_t gap_lo, gap_hi; /* the last gap: seqs in it never came before what followed */
} chan_run;

typedef struct check {
    chan_run *runs;  /* open addressing by channel id */
    size_t cap, n;
    long long entries, repeats, gaps, reorders, trimmed;
    int told;
} check;

static chan_run *run_of(check *c, int64_t ch)
{
    if (c->n * 2 >= c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 1024;
        chan_run *runs = calloc(cap, sizeof *runs);
        if (!runs)
            return NULL;
        for (size_t i = 0; i < c->cap; i++)
            if (c->runs[i].ch) {
                size_t j = (size_t)c->runs[i].ch % cap;
                while (runs[j].ch)
                    j = (j + 1) % cap;
                runs[j] = c->runs[i];
            }
        free(c->runs);
        c->runs = runs;
        c->cap = cap;
    }
    size_t j = (size_t)ch % c->cap;
    while (c->runs[j].ch && c->runs[j].ch != ch)
        j = (j + 1) % c->cap;
    if (!c->runs[j].ch) {
        c->runs[j] = (chan_run){.ch = ch};
        c->n++;
    }
    return &c->runs[j];
}

/* One entry of partition p's stream, in stream order. */
static void take(check *c, int p, const char *id, const chorus_event *ev)
{
    chan_run *r = run_of(c, ev->channel_id);
    if (!r)
        return;
    c->entries++;
    if (r->last == 0) {
        r->first = r->last = ev->seq;
        c->trimmed += ev->seq > 1;
        return;
    }
    if (ev->seq == r->last + 1) {
        r->last = ev->seq;
        return;
    }
    bool in_gap = ev->seq >= r->gap_lo && ev->seq <= r->gap_hi;
    if (ev->seq <= r->last && ev->seq >= r->first && !in_gap) {
        c->repeats++; /* at least once: the same event again */
        return;
    }
    bool gap = ev->seq > r->last;
    c->gaps += gap;
    c->reorders += !gap;
    if (c->told++ < TOLD_MAX)
        printf("chorus:ch:%d: channel %lld: seq %lld (entry %s, outbox id %lld) follows seq %lld"
               " (%s)\n", p, (long long)ev->channel_id, (long long)ev->seq, id,
               (long long)ev->id, (long long)r->last, gap ? "a gap" : "out of order");
    if (gap) {
        r->gap_lo = r->last + 1;
        r->gap_hi = ev->seq - 1;
        r->last = ev->seq;
    }
}

/* Reads one page of partition p's stream after *after ("-" first); false at its end. */
static int read_page(redisContext *rc, check *c, int p, char *after, size_t afterlen)
{
    char key[32], start[64];
    snprintf(key, sizeof key, "chorus:ch:%d", p);
    snprintf(start, sizeof start, "%s%s", strcmp(after, "-") ? "(" : "", after);
    redisReply *r = redisCommand(rc, "XRANGE %s %s + COUNT %d", key, start, PAGE);
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        log_error("check-streams: XRANGE %s: %s", key, r && r->str ? r->str : rc->errstr);
        freeReplyObject(r);
        return -1;
    }
    size_t n = r->elements;
    for (size_t i = 0; i < n; i++) {
        redisReply *e = r->element[i], *fields = e->element[1];
        chorus_event ev;
        char err[128];
        if (fields->elements == 2 &&
            event_decode_msgpack(fields->element[1]->str, fields->element[1]->len, &ev, err,
                                 sizeof err) == 0) {
            if (ev.channel_id > 0 && ev.seq > 0)
                take(c, p, e->element[0]->str, &ev);
            event_clear(&ev);
        } else {
            printf("chorus:ch:%d: entry %s does not decode\n", p, e->element[0]->str);
        }
        if (i == n - 1)
            snprintf(after, afterlen, "%s", e->element[0]->str);
    }
    freeReplyObject(r);
    return n == PAGE;
}

int app_check_streams(const chorus_config *cfg)
{
    char host[256];
    int port, db;
    if (rclient_parse_url(cfg->redis_url, host, sizeof host, &port, &db) != CHORUS_OK) {
        log_error("check-streams: bad redis_url");
        return 2;
    }
    redisContext *rc = redisConnect(host, port);
    redisReply *sel = rc && !rc->err ? redisCommand(rc, "SELECT %d", db) : NULL;
    if (!sel || sel->type == REDIS_REPLY_ERROR) {
        log_error("check-streams: cannot reach Redis at %s:%d", host, port);
        freeReplyObject(sel);
        redisFree(rc);
        return 2;
    }
    freeReplyObject(sel);
    check c = {0};
    int rc_page = 0;
    for (int p = 0; p < cfg->partitions && rc_page >= 0; p++) {
        char after[64] = "-";
        while ((rc_page = read_page(rc, &c, p, after, sizeof after)) > 0)
            ;
    }
    redisFree(rc);
    printf("check-streams: %lld entries of %zu channels over %d partitions: %lld gaps, %lld "
           "out of order, %lld repeats, %lld channels trimmed at the head\n",
           c.entries, c.n, cfg->partitions, c.gaps, c.reorders, c.repeats, c.trimmed);
    free(c.runs);
    if (rc_page < 0)
        return 2;
    return c.gaps || c.reorders ? 1 : 0;
}
