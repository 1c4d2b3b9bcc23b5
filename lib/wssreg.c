/* wssreg.c - the WSS node registry as the gateway and the scaler see it (wssreg.h). */
#include "chorus/wssreg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chorus/log.h"
#include "chorus/metrics.h"
#include "chorus/status.h"

typedef struct poll_state {
    wssreg_node nodes[WSSREG_MAX_NODES];
    int n, due;
    double sent_ms;
    bool failed; /* a reply was lost or was not what we asked: the view is not complete */
} poll_state;

struct wssreg {
    struct ev_loop *loop;
    rclient *r;
    ev_timer timer;
    wssreg_node nodes[WSSREG_MAX_NODES]; /* the last complete view */
    int n;
    double read_ms;                       /* when its poll was sent */
    int trust_ms;
    bool ready;
    poll_state *poll;                     /* the poll in flight, or NULL */
    bool freeing;
    metrics_series *m_stalled;            /* picks of a stalled node */
};

static const wssreg_node *find(const wssreg_node *nodes, int n, const char *id)
{
    for (int i = 0; i < n; i++)
        if (strcmp(nodes[i].id, id) == 0)
            return &nodes[i];
    return NULL;
}

/* A node's assignments since its last write survive a poll that did not see a new
 * write of it; a new write counts the clients that came, so the estimate starts over. */
static void commit(wssreg *g, poll_state *p)
{
    for (int i = 0; i < p->n; i++) {
        const wssreg_node *old = find(g->nodes, g->n, p->nodes[i].id);
        if (old && old->updated_ms == p->nodes[i].updated_ms)
            p->nodes[i].assigned = old->assigned;
    }
    memcpy(g->nodes, p->nodes, (size_t)p->n * sizeof *p->nodes);
    g->n = p->n;
    g->read_ms = p->sent_ms;
    g->ready = true;
}

static void field(wssreg_node *n, const char *k, const char *v)
{
    if (strcmp(k, "url") == 0)
        snprintf(n->url, sizeof n->url, "%s", v);
    else if (strcmp(k, "connections") == 0)
        n->connections = atol(v);
    else if (strcmp(k, "capacity") == 0)
        n->capacity = atol(v);
    else if (strcmp(k, "events_per_s") == 0)
        n->events_per_s = atof(v);
    else if (strcmp(k, "draining") == 0)
        n->draining = strcmp(v, "1") == 0;
    else if (strcmp(k, "updated_ms") == 0)
        n->updated_ms = atof(v);
}

typedef struct hget {
    wssreg *g;
    int index;
} hget;

static void poll_done(wssreg *g)
{
    poll_state *p = g->poll;
    if (--p->due > 0)
        return;
    g->poll = NULL;
    if (!g->freeing && !p->failed) {
        /* nodes whose hash expired (or never came) drop out: no url means no entry */
        int k = 0;
        for (int i = 0; i < p->n; i++)
            if (p->nodes[i].url[0])
                p->nodes[k++] = p->nodes[i];
        p->n = k;
        commit(g, p);
    }
    free(p);
    if (g->freeing && !g->poll)
        free(g);
}

static void on_hash(void *arg, redisReply *reply)
{
    hget h = *(hget *)arg;
    free(arg);
    wssreg_node *n = &h.g->poll->nodes[h.index];
    if (!reply || reply->type != REDIS_REPLY_ARRAY)
        h.g->poll->failed = true; /* an expired hash is an empty array, not this */
    for (size_t i = 0; reply && reply->type == REDIS_REPLY_ARRAY && i + 1 < reply->elements;
         i += 2)
        if (reply->element[i]->type == REDIS_REPLY_STRING &&
            reply->element[i + 1]->type == REDIS_REPLY_STRING)
            field(n, reply->element[i]->str, reply->element[i + 1]->str);
    poll_done(h.g);
}

static void on_ids(void *arg, redisReply *reply)
{
    wssreg *g = arg;
    poll_state *p = g->poll;
    p->due = 1; /* held until every HGETALL is sent */
    if (!reply || reply->type != REDIS_REPLY_ARRAY)
        p->failed = true;
    for (size_t i = 0; !g->freeing && reply && reply->type == REDIS_REPLY_ARRAY &&
                       i < reply->elements && p->n < WSSREG_MAX_NODES;
         i++) {
        const redisReply *id = reply->element[i];
        if (id->type != REDIS_REPLY_STRING || id->len >= WSSREG_ID_MAX)
            continue;
        wssreg_node *n = &p->nodes[p->n];
        memset(n, 0, sizeof *n);
        memcpy(n->id, id->str, id->len + 1);
        hget *h = malloc(sizeof *h);
        if (!h)
            break;
        *h = (hget){g, p->n};
        if (rclient_command(g->r, on_hash, h, "HGETALL chorus:wss:node:%s", n->id) != CHORUS_OK) {
            free(h);
            p->failed = true;
            break;
        }
        p->n++;
        p->due++;
    }
    poll_done(g);
}

static void on_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    wssreg *g = t->data;
    if (g->poll || !rclient_connected(g->r))
        return;
    g->poll = calloc(1, sizeof *g->poll);
    if (!g->poll)
        return;
    g->poll->sent_ms = ev_now(loop) * 1000;
    char since[32];
    snprintf(since, sizeof since, "%.0f", g->poll->sent_ms - WSSREG_RECENT_MS);
    if (rclient_command(g->r, on_ids, g, "ZRANGEBYSCORE chorus:wss:nodes %s +inf", since) !=
        CHORUS_OK) {
        free(g->poll);
        g->poll = NULL;
    }
}

wssreg *wssreg_new(struct ev_loop *loop, rclient *r, int interval_ms, int trust_ms)
{
    wssreg *g = r && interval_ms > 0 && trust_ms > 0 ? calloc(1, sizeof *g) : NULL;
    if (!g)
        return NULL;
    g->loop = loop;
    g->r = r;
    g->trust_ms = trust_ms;
    g->m_stalled = metrics_counter("chorus_wss_stalled_assignments_total",
                                   "clients sent to a stalled WSS node because no live "
                                   "node had room");
    ev_timer_init(&g->timer, on_timer, 0, interval_ms / 1000.0);
    g->timer.data = g;
    ev_timer_start(loop, &g->timer);
    return g;
}

void wssreg_free(wssreg *g)
{
    if (!g)
        return;
    ev_timer_stop(g->loop, &g->timer);
    g->freeing = true;
    if (!g->poll) /* else the last reply frees it */
        free(g);
}

const wssreg_node *wssreg_nodes(const wssreg *g, int *n)
{
    *n = g->n;
    return g->nodes;
}

bool wssreg_ready(const wssreg *g)
{
    return g->ready;
}

bool wssreg_trusted(const wssreg *g, double now_ms)
{
    return g->ready && now_ms - g->read_ms <= g->trust_ms;
}

double wssreg_read_ms(const wssreg *g)
{
    return g->read_ms;
}

static bool has_room(const wssreg_node *n)
{
    return n->capacity > 0 && n->connections + n->assigned < n->capacity;
}

/* Judged at the view's reading, not now: a view that could not be refreshed (Redis
 * slow, or this process not scheduled) says nothing about the nodes having stopped. */
bool wssreg_live(const wssreg *g, const wssreg_node *n)
{
    return !n->draining && n->updated_ms >= g->read_ms - WSSREG_FRESH_MS;
}

bool wssreg_available(const wssreg *g, const wssreg_node *n)
{
    return wssreg_live(g, n) && has_room(n);
}

static double load(const wssreg_node *n)
{
    return (double)(n->connections + n->assigned) / (double)n->capacity;
}

/* Silent past WSSREG_FRESH_MS but not past WSSREG_RECENT_MS when the view was read. */
static bool stalled(const wssreg *g, const wssreg_node *n)
{
    return !n->draining && !wssreg_live(g, n) && n->updated_ms >= g->read_ms - WSSREG_RECENT_MS;
}

static wssreg_node *least_loaded(wssreg *g, bool want_stalled)
{
    wssreg_node *best = NULL;
    for (int i = 0; i < g->n; i++) {
        wssreg_node *n = &g->nodes[i];
        if (!has_room(n) || (want_stalled ? !stalled(g, n) : !wssreg_live(g, n)))
            continue;
        if (!best || load(n) < load(best) ||
            (load(n) == load(best) && n->events_per_s < best->events_per_s))
            best = n;
    }
    return best;
}

const wssreg_node *wssreg_pick(wssreg *g, double now_ms)
{
    if (!wssreg_trusted(g, now_ms))
        return NULL;
    wssreg_node *best = least_loaded(g, false);
    if (!best && (best = least_loaded(g, true)) != NULL)
        metrics_inc(g->m_stalled);
    if (best)
        best->assigned++;
    return best;
}
