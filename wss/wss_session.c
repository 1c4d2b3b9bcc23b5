/* wss_session.c - one WebSocket session of the node: authentication, the hello frame,
 * the channel list, client ops, heartbeat and the session's end (API.md "WebSocket").
 * What it sends is in wss_queue.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chorus/httpd.h"
#include "chorus/jwt.h"
#include "chorus/log.h"
#include "chorus/pgpool.h"
#include "chorus/status.h"
#include "wss_internal.h"
#include "wss_members.h"

bool wss_session_is_msgpack(const wss_session *s)
{
    return s->msgpack;
}

bool wss_session_has(const wss_session *s, int64_t ch)
{
    for (int i = 0; i < s->nchans; i++)
        if (s->chans[i] == ch)
            return true;
    return false;
}

/* ---- channels ---------------------------------------------------------------------- */

bool wss_session_add_channel(wss_session *s, int64_t ch, int64_t seen_seq)
{
    if (!s->node->fanout || wss_session_has(s, ch))
        return false;
    if (s->nchans == s->chans_cap) {
        int cap = s->chans_cap ? s->chans_cap * 2 : 16;
        int64_t *nc = realloc(s->chans, (size_t)cap * sizeof *nc);
        if (!nc)
            return false;
        s->chans = nc;
        s->chans_cap = cap;
    }
    if (wss_fanout_add(s->node->fanout, ch, s, seen_seq) != CHORUS_OK)
        return false;
    s->chans[s->nchans++] = ch;
    return true;
}

void wss_session_remove_channel(wss_session *s, int64_t ch)
{
    for (int i = 0; i < s->nchans; i++)
        if (s->chans[i] == ch) {
            s->chans[i] = s->chans[--s->nchans];
            if (s->node->fanout)
                wss_fanout_remove(s->node->fanout, ch, s);
            return;
        }
}

void wss_session_watch(wss_session *s, const int64_t *users, int n)
{
    wss_fanout *f = s->node->fanout;
    for (int i = 0; f && i < s->nwatching; i++)
        wss_fanout_unwatch(f, s->watching[i], s);
    s->nwatching = 0;
    if (n > 0 && !s->watching)
        s->watching = malloc(WSS_MAX_WATCH * sizeof *s->watching);
    for (int i = 0; f && s->watching && i < n && i < WSS_MAX_WATCH; i++)
        if (wss_fanout_watch(f, users[i], s) == CHORUS_OK)
            s->watching[s->nwatching++] = users[i];
}

bool wss_change_push(wss_session *s, wss_change **list, int *n, wss_change c)
{
    if (*n == WSS_MAX_PENDING_CHANGES) {
        wss_session_close(s, WSS_CLOSE_TRY_AGAIN, "membership changing too fast: reconnect");
        return false;
    }
    if (!*list)
        *list = malloc(WSS_MAX_PENDING_CHANGES * sizeof **list);
    if (!*list) {
        wss_session_close(s, 1011, "out of memory");
        return false;
    }
    (*list)[(*n)++] = c;
    return true;
}

/* ---- the end ----------------------------------------------------------------------- */

static void session_destroy(wss_session *s)
{
    json_decref(s->resume_later);
    free(s->chans);
    free(s->watching);
    free(s->changes);
    free(s->catchup);
    free(s);
}

bool wss_session_reply_came(wss_session *s)
{
    s->pending--;
    if (!s->closed)
        return true;
    if (s->pending == 0)
        session_destroy(s);
    return false;
}

/* The connection closed: leave the indexes; the memory goes now or, while replies that
 * point at the session are due, when the last one comes. */
static void session_free(wss_session *s)
{
    wss_node *n = s->node;
    wss_presence_closed(s); /* before leaving the index: it looks for the user's others */
    while (s->nchans)
        wss_session_remove_channel(s, s->chans[s->nchans - 1]);
    wss_session_watch(s, NULL, 0);
    if (n->fanout)
        wss_fanout_remove_user(n->fanout, s);
    if (s->prev)
        s->prev->next = s->next;
    else
        n->all = s->next;
    if (s->next)
        s->next->prev = s->prev;
    ev_timer_stop(app_loop(n->app), &s->grace);
    ev_timer_stop(app_loop(n->app), &s->idle);
    wss_session_queue_free(s);
    free(s->rx);
    s->rx = NULL;
    n->sessions--;
    metrics_set(n->m_sessions, n->sessions);
    s->closed = true;
    if (s->pending == 0)
        session_destroy(s);
}

/* ---- timers ------------------------------------------------------------------------ */

/* No resume came in time: the live events flow. */
static void on_grace(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    wss_session *s = t->data;
    if (s->awaiting && !s->resume_later)
        wss_session_end_await(s);
}

/* libev's cheap idle timeout: the timer is only re-armed when it fires. */
static void on_idle(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    wss_session *s = t->data;
    double timeout = 2 * s->node->cfg->wss_heartbeat_ms / 1000.0;
    double left = s->last_rx + timeout - ev_now(loop);
    if (left > 0) {
        t->repeat = left;
        ev_timer_again(loop, t);
        return;
    }
    metrics_inc(s->node->m_closes_idle);
    log_info("wss session %s (user %lld): silent for %.0f s: closing", s->id,
             (long long)s->user_id, timeout);
    wss_session_close(s, WSS_CLOSE_IDLE, "idle timeout");
}

/* ---- loading the channel list ------------------------------------------------------ */

/* One query of the load answered; the last one ends it. */
static void load_step_done(wss_session *s)
{
    if (--s->loading > 0 || s->close_code)
        return;
    s->loaded = true;
    wss_session_greet(s);
    wss_live_apply_pending(s);
    wss_presence_opened(s);
    json_t *later = s->resume_later;
    s->resume_later = NULL;
    if (later)
        wss_resume(s, later);
    json_decref(later);
}

static void on_chans_positioned(void *arg, bool ok)
{
    (void)ok; /* without Redis no event reaches anyone; the client resumes */
    wss_session *s = arg;
    if (wss_session_reply_came(s))
        load_step_done(s);
}

/* A partition first subscribed here has no position until its "$" is resolved. An entry
 * added to its stream before the resolution reached Redis would fall behind that
 * position and never be delivered, though it came after hello (the node's XREVRANGE
 * leaves at the next pass of the loop, hello at once): hello waits for the positions. */
static void session_loaded(wss_session *s, const int64_t *chans, int n)
{
    for (int i = 0; i < n; i++)
        wss_session_add_channel(s, chans[i], 0);
    if (wss_fanout_resolving(s->node->fanout) &&
        wss_fanout_barrier(s->node->fanout, on_chans_positioned, s) == CHORUS_OK) {
        s->pending++;
        return;
    }
    load_step_done(s);
}

/* The channel list, from the membership cache or Postgres (wss_members.c). */
static void on_channels(void *arg, const int64_t *chans, int n, const char *err)
{
    wss_session *s = arg;
    if (!wss_session_reply_came(s))
        return;
    if (err) {
        log_warn("wss session %s: loading channels: %s", s->id, err);
        wss_session_close(s, 1011, "channels unavailable");
        return;
    }
    session_loaded(s, chans, n);
}

/* The user streams read from before the list is read: a membership change the list
 * misses comes as an event (wss_fanout_barrier). */
static void on_positioned(void *arg, bool ok)
{
    (void)ok; /* without Redis the list still loads; events wait for resume */
    wss_session *s = arg;
    if (!wss_session_reply_came(s))
        return;
    s->loading = 1;
    if (wss_members_load(s->node, s->user_id, on_channels, s) != CHORUS_OK) {
        wss_session_close(s, WSS_CLOSE_FULL, "busy");
        return;
    }
    s->pending++;
}

static void session_load(wss_session *s)
{
    if (wss_fanout_barrier(s->node->fanout, on_positioned, s) == CHORUS_OK) {
        s->pending++;
    } else {
        s->pending++; /* Redis is down: load at once, on_positioned expects a reply due */
        on_positioned(s, false);
    }
}

/* ---- opening ----------------------------------------------------------------------- */

static bool refuse(struct lws *wsi, int code, const char *why)
{
    lws_close_reason(wsi, (enum lws_close_status)code, (unsigned char *)why, strlen(why));
    return false;
}

static bool admit(wss_node *node, struct lws *wsi, int64_t *user)
{
    char token[2048], err[128] = "missing token";
    if (!httpd_ws_token(wsi, token, sizeof token) ||
        jwt_verify(node->cfg->jwt_secret, node->secret_len, token, (int64_t)time(NULL), user,
                   err, sizeof err) != CHORUS_OK) {
        log_info("wss: upgrade refused: %s", err);
        return refuse(wsi, WSS_CLOSE_UNAUTHORIZED, "unauthorized");
    }
    if (node->draining || !node->ready)
        return refuse(wsi, WSS_CLOSE_FULL, node->draining ? "draining" : "starting");
    if (node->sessions >= node->capacity) {
        log_warn("wss: at capacity (%d sessions): upgrade closed with 4009", node->capacity);
        return refuse(wsi, WSS_CLOSE_FULL, "full");
    }
    return true;
}

/* ws://.../ws?...&resume=1: the client will send a resume, so live events wait for it
 * however long it takes to come (bounded by the hold queue and the idle timeout). The
 * 500 ms grace is for clients that may send nothing: under load a resume can come later
 * than that, and the events sent live meanwhile would leave a gap behind them. */
static void session_timers(wss_session *s)
{
    struct ev_loop *loop = app_loop(s->node->app);
    s->awaiting = true;
    /* started with hello (wss_session_greet): the 500 ms are the client's, after it */
    ev_timer_init(&s->grace, on_grace, WSS_RESUME_GRACE_MS / 1000.0, 0);
    s->grace.data = s;
    s->resume_promised = httpd_ws_flag(s->wsi, "resume");
    s->last_rx = ev_now(loop);
    ev_init(&s->idle, on_idle);
    s->idle.repeat = 2 * s->node->cfg->wss_heartbeat_ms / 1000.0;
    s->idle.data = s;
    ev_timer_again(loop, &s->idle);
}

static wss_session *session_open(wss_node *node, struct lws *wsi)
{
    int64_t user = 0;
    if (!admit(node, wsi, &user))
        return NULL;
    wss_session *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->node = node;
    s->wsi = wsi;
    s->user_id = user;
    const struct lws_protocols *p = lws_get_protocol(wsi);
    s->msgpack = p && p->name && strcmp(p->name, "chorus.msgpack") == 0;
    snprintf(s->id, sizeof s->id, "%s-%llu", node->node_id, ++node->next_session);
    if (wss_fanout_add_user(node->fanout, s) != CHORUS_OK) {
        free(s);
        return NULL;
    }
    s->next = node->all;
    if (node->all)
        node->all->prev = s;
    node->all = s;
    node->sessions++;
    metrics_set(node->m_sessions, node->sessions);
    /* hello waits for the channel list (wss_session_greet): from hello on, every event
     * of the session's channels reaches it. Sent at once, it opened a window in which
     * a client that considered itself connected missed events: under load the list can
     * take seconds (docs/WSS.md "A session"). */
    session_timers(s);
    session_load(s);
    return s;
}

/* ---- client frames ----------------------------------------------------------------- */

static json_t *decode_op(wss_session *s, const unsigned char *p, size_t n)
{
    if (!s->msgpack)
        return json_loadb((const char *)p, n, JSON_REJECT_DUPLICATES, NULL);
    json_t *j = NULL;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    if (msgpack_unpack_next(&u, (const char *)p, n, NULL) == MSGPACK_UNPACK_SUCCESS)
        j = json_from_msgpack(&u.data);
    msgpack_unpacked_destroy(&u);
    return j;
}

/* A whole client frame: one op. */
static void on_op(wss_session *s, const unsigned char *p, size_t n)
{
    json_t *j = decode_op(s, p, n);
    const char *op = json_string_value(json_object_get(j, "op"));
    if (!json_is_object(j) || !op) {
        wss_session_send_error(s, "bad_frame", json_is_object(j) ? "the object has no \"op\""
                                                                 : "a frame is one JSON object");
    } else if (strcmp(op, "resume") == 0) {
        wss_resume(s, j);
    } else {
        if (s->awaiting && !s->resume_later)
            wss_session_end_await(s); /* the first op was not a resume */
        if (strcmp(op, "ping") == 0)
            wss_session_send_json(s, json_pack("{s:s}", "t", "pong"));
        else if (strcmp(op, "send") == 0)
            wss_send(s, j);
        else if (strcmp(op, "typing") == 0)
            wss_typing(s, j);
        else if (strcmp(op, "presence_sub") == 0)
            wss_presence_sub(s, j);
        else
            wss_session_send_error(s, "unknown_op", "this op is not supported");
    }
    json_decref(j);
}

static int on_receive(wss_session *s, const void *in, size_t len)
{
    s->last_rx = ev_now(app_loop(s->node->app));
    int whole = httpd_ws_collect(s->wsi, in, len, WSS_MAX_FRAME, &s->rx, &s->rx_len);
    if (whole <= 0)
        return whole;
    if (!s->close_code && !s->drain)
        on_op(s, s->rx, s->rx_len);
    s->rx_len = 0;
    return 0;
}

int wss_session_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user,
                         void *in, size_t len)
{
    wss_session **slot = user;
    wss_node *node = httpd_ws_arg(wsi);
    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        return node->draining ? 1 : 0;
    case LWS_CALLBACK_ESTABLISHED:
        *slot = session_open(node, wsi);
        return *slot ? 0 : -1;
    case LWS_CALLBACK_RECEIVE:
        return *slot ? on_receive(*slot, in, len) : -1;
    case LWS_CALLBACK_RECEIVE_PONG:
        if (*slot)
            (*slot)->last_rx = ev_now(app_loop(node->app));
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return *slot ? wss_session_writeable(*slot) : -1;
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        if (*slot)
            (*slot)->peer_closed = true;
        return 0; /* lws echoes the close */
    case LWS_CALLBACK_CLOSED:
        if (*slot)
            session_free(*slot);
        *slot = NULL;
        return 0;
    default:
        return 0;
    }
}
