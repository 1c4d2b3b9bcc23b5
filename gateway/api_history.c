/* api_history.c - GET .../messages through a cache of rendered pages.
 *
 * A page is exact as long as its channel's last_seq has not moved: every change to a
 * channel's messages (post, edit, delete, reaction, membership) takes a new seq in the
 * same transaction. So a cached page is served after one cheap query, api_channel_seq,
 * which also does the access check (a caller who lost access gets 404 like any other
 * request); a page whose channel moved on is rendered again by api_message_list, which
 * returns the last_seq of its own snapshot. Bounded in entries and bytes (LRU).
 */
#include <stdlib.h>
#include <string.h>

#include "api_internal.h"
#include "chorus/log.h"
#include "chorus/metrics.h"
#include "chorus/status.h"

#define HC_BUCKETS 4096
#define HC_MAX_ENTRIES 8192
#define HC_MAX_BYTES (64u << 20)

typedef struct hc_entry {
    struct hc_entry *next;             /* bucket chain */
    struct hc_entry *lru_prev, *lru_next;
    char *key;
    long long last_seq;
    char *body;
    size_t len;
} hc_entry;

struct history_cache {
    hc_entry *buckets[HC_BUCKETS];
    hc_entry *lru_head, *lru_tail; /* head = most recently used */
    size_t entries, bytes;
    metrics_series *m_hit, *m_miss, *m_stale, *m_fresh, *m_bytes;
};

history_cache *history_cache_new(void)
{
    history_cache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    metrics_family *f = metrics_family_new(METRICS_COUNTER, "chorus_history_cache_total",
                                           "History page lookups by result", "result",
                                           NULL, 0);
    c->m_hit = metrics_with1(f, "hit");
    c->m_miss = metrics_with1(f, "miss");
    c->m_stale = metrics_with1(f, "stale");
    c->m_fresh = metrics_with1(f, "fresh"); /* served without Postgres (api_fresh.c) */
    c->m_bytes = metrics_gauge("chorus_history_cache_bytes", "Bytes of cached history pages");
    return c;
}

static unsigned hash(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h % HC_BUCKETS;
}

static hc_entry *find(history_cache *c, const char *key)
{
    for (hc_entry *e = c->buckets[hash(key)]; e; e = e->next)
        if (strcmp(e->key, key) == 0)
            return e;
    return NULL;
}

static void lru_unlink(history_cache *c, hc_entry *e)
{
    if (e->lru_prev)
        e->lru_prev->lru_next = e->lru_next;
    else
        c->lru_head = e->lru_next;
    if (e->lru_next)
        e->lru_next->lru_prev = e->lru_prev;
    else
        c->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void lru_push(history_cache *c, hc_entry *e)
{
    e->lru_next = c->lru_head;
    if (c->lru_head)
        c->lru_head->lru_prev = e;
    c->lru_head = e;
    if (!c->lru_tail)
        c->lru_tail = e;
}

static void remove_entry(history_cache *c, hc_entry *e)
{
    hc_entry **p = &c->buckets[hash(e->key)];
    while (*p != e)
        p = &(*p)->next;
    *p = e->next;
    lru_unlink(c, e);
    c->entries--;
    c->bytes -= e->len;
    free(e->key);
    free(e->body);
    free(e);
}

static void put(history_cache *c, const char *key, long long last_seq, const char *body,
                size_t len)
{
    if (len > HC_MAX_BYTES / 16)
        return;
    hc_entry *old = find(c, key);
    if (old)
        remove_entry(c, old);
    while (c->lru_tail && (c->entries >= HC_MAX_ENTRIES || c->bytes + len > HC_MAX_BYTES))
        remove_entry(c, c->lru_tail);
    hc_entry *e = calloc(1, sizeof *e);
    char *k = strdup(key), *b = malloc(len ? len : 1);
    if (!e || !k || !b) {
        free(e);
        free(k);
        free(b);
        return;
    }
    memcpy(b, body, len);
    *e = (hc_entry){.key = k, .last_seq = last_seq, .body = b, .len = len};
    unsigned h = hash(key);
    e->next = c->buckets[h];
    c->buckets[h] = e;
    lru_push(c, e);
    c->entries++;
    c->bytes += len;
    metrics_set(c->m_bytes, (double)c->bytes);
}

void history_cache_free(history_cache *c)
{
    if (!c)
        return;
    while (c->lru_head)
        remove_entry(c, c->lru_head);
    free(c);
}

/* ---- the request ------------------------------------------------------------------ */

static void render(api_call *call);

/* caller, workspace, channel: the first three arguments of the route */
static void learn(api_call *call, long long last_seq)
{
    fresh_learn(call->x->fresh, atoll(call->params[0]), atoll(call->params[1]),
                atoll(call->params[2]), last_seq, call->started, call->epoch);
}

static void serve(history_cache *c, api_call *call, hc_entry *e, metrics_series *m)
{
    metrics_inc(m);
    lru_unlink(c, e);
    lru_push(c, e);
    http_respond(call->r, 200, "application/json", e->body, e->len);
    api_call_free(call);
}

/* api_message_list answered: (status, body, last_seq). */
static void on_page(void *arg, PGresult *res, const char *err)
{
    api_call *call = arg;
    history_cache *c = call->x->history;
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
        atoi(PQgetvalue(res, 0, 0)) == 200) {
        put(c, call->cache_key, atoll(PQgetvalue(res, 0, 2)), PQgetvalue(res, 0, 1),
            (size_t)PQgetlength(res, 0, 1));
        learn(call, atoll(PQgetvalue(res, 0, 2)));
    }
    api_respond_result(call->r, res, err);
    api_call_free(call);
}

static void render(api_call *call)
{
    if (pgpool_query(call->x->pg, "api_message_list_page", call->nparams, call->params,
                     on_page, call) != CHORUS_OK) {
        api_respond_result(call->r, NULL, "too many requests are waiting for the database");
        api_call_free(call);
    }
}

/* api_channel_seq answered: serve the cached page if the channel has not moved. */
static void on_seq(void *arg, PGresult *res, const char *err)
{
    api_call *call = arg;
    history_cache *c = call->x->history;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        api_respond_result(call->r, res, err); /* 404 for a caller without access */
        api_call_free(call);
        return;
    }
    if (atoi(PQgetvalue(res, 0, 0)) == 200)
        learn(call, atoll(PQgetvalue(res, 0, 1)));
    hc_entry *e = find(c, call->cache_key); /* may have been evicted meanwhile */
    if (e && e->last_seq == atoll(PQgetvalue(res, 0, 1))) {
        serve(c, call, e, c->m_hit);
        return;
    }
    metrics_inc(c->m_stale);
    render(call);
}

/* The key: everything of the request that shapes the page (the caller does not: a page
 * is the same for everyone who may see the channel; access is checked per request). */
static void make_key(api_call *call)
{
    size_t n = 0;
    for (int i = 2; i < call->nparams; i++) /* skip caller and workspace */
        n += (call->params[i] ? strlen(call->params[i]) : 1) + 1;
    call->cache_key = malloc(n + 1);
    if (!call->cache_key)
        return;
    char *p = call->cache_key;
    for (int i = 2; i < call->nparams; i++) {
        const char *v = call->params[i] ? call->params[i] : "\x01";
        size_t l = strlen(v);
        memcpy(p, v, l);
        p[l] = '|';
        p += l + 1;
    }
    *p = '\0';
}

void api_history_run(api_call *call)
{
    history_cache *c = call->x->history;
    make_key(call);
    call->started = ev_now(app_loop(call->x->app));
    call->epoch = fresh_epoch(call->x->fresh);
    hc_entry *e = call->cache_key ? find(c, call->cache_key) : NULL;
    if (e && fresh_page_ok(call->x->fresh, atoll(call->params[0]), atoll(call->params[1]),
                           atoll(call->params[2]), e->last_seq, call->started)) {
        serve(c, call, e, c->m_fresh);
        return;
    }
    if (!e) {
        metrics_inc(c->m_miss);
        if (call->cache_key)
            render(call);
        else
            api_call_run(call);
        return;
    }
    /* caller, workspace, channel: the first three arguments of the route */
    if (pgpool_query(call->x->pg, "api_channel_seq", 3, call->params, on_seq, call) !=
        CHORUS_OK) {
        api_respond_result(call->r, NULL, "too many requests are waiting for the database");
        api_call_free(call);
    }
}

int api_history_prepare(api *x)
{
    return pgpool_prepare(x->pg, "api_channel_seq",
                          "SELECT status, last_seq FROM api_channel_seq($1::bigint, $2::bigint,"
                          " $3::bigint)") == CHORUS_OK &&
                   pgpool_prepare(x->pg, "api_message_list_page",
                                  "SELECT status, body::text, last_seq FROM api_message_list("
                                  "$1::bigint, $2::bigint, $3::bigint, $4, $5, $6, $7, $8)") ==
                       CHORUS_OK
               ? CHORUS_OK
               : CHORUS_ERR;
}
