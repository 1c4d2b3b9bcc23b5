/* wss_session.c - one WebSocket session of the node: authentication, the hello frame,
 * client ops, and the bounded outbound queue (API.md "WebSocket").
 *
 * Writing follows the lws rule: one lws_write per SERVER_WRITEABLE, asking for another
 * while the queue is not empty. The queue holds shared frames (wss_frame) and is bounded
 * in bytes (wss_queue_bytes): a session that would go past it is closed with 4008 (the
 * client resumes later), so one slow reader never holds memory or delays the others.
 * A close decided outside lws' callbacks is carried out at the next WRITEABLE, where
 * returning -1 is allowed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "chorus/event.h"
#include "chorus/httpd.h"
#include "chorus/jwt.h"
#include "chorus/log.h"
#include "chorus/pgpool.h"
#include "chorus/status.h"
#include "wss_internal.h"
#include "wss_members.h"

/* ---- frames ------------------------------------------------------------------------ */

wss_frame *wss_frame_new(const void *data, size_t len, bool binary)
{
    wss_frame *f = malloc(sizeof *f + LWS_PRE + len);
    if (!f)
        return NULL;
    f->refs = 1;
    f->binary = binary;
    f->len = len;
    memcpy(f->data + LWS_PRE, data, len);
    return f;
}

void wss_frame_unref(wss_frame *f)
{
    if (f && --f->refs == 0)
        free(f);
}

/* ---- the outbound queue ------------------------------------------------------------ */

static void session_close_later(wss_session *s, int code, const char *why)
{
    if (s->close_code)
        return;
    s->close_code = code;
    s->close_why = why;
    lws_callback_on_writable(s->wsi);
    /* A peer that reads nothing never makes the socket writable again: cut it after
     * 5 s without the close frame rather than keep it for ever. */
    lws_set_timeout(s->wsi, PENDING_TIMEOUT_CLOSE_SEND, 5);
}

static void queue_clear(wss_session *s)
{
    while (s->head) {
        wss_qitem *q = s->head;
        s->head = q->next;
        wss_frame_unref(q->frame);
        free(q);
    }
    s->tail = NULL;
    metrics_add(s->node->m_bytes_queued, -(double)s->queued_bytes);
    s->queued_bytes = 0;
}

void wss_session_send(wss_session *s, wss_frame *f)
{
    if (!f || s->close_code)
        return;
    if (s->queued_bytes + f->len > (size_t)s->node->cfg->wss_queue_bytes) {
        metrics_inc(s->node->m_closes_slow);
        log_info("wss session %s (user %lld): outbound queue over %d bytes: closing 4008",
                 s->id, (long long)s->user_id, s->node->cfg->wss_queue_bytes);
        queue_clear(s);
        session_close_later(s, WSS_CLOSE_TOO_SLOW, "too slow");
        return;
    }
    wss_qitem *q = malloc(sizeof *q);
    if (!q) {
        session_close_later(s, 1011, "out of memory");
        return;
    }
    f->refs++;
    q->frame = f;
    q->next = NULL;
    if (s->tail)
        s->tail->next = q;
    else
        s->head = q;
    s->tail = q;
    s->queued_bytes += f->len;
    metrics_add(s->node->m_bytes_queued, (double)f->len);
    lws_callback_on_writable(s->wsi);
}

wss_frame *wss_frame_encode(const json_t *j, bool msgpack)
{
    wss_frame *f = NULL;
    if (msgpack) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        if (msgpack_pack_json(&pk, j) == CHORUS_OK)
            f = wss_frame_new(sb.data, sb.size, true);
        msgpack_sbuffer_destroy(&sb);
    } else {
        char *text = json_dumps(j, JSON_COMPACT);
        if (text)
            f = wss_frame_new(text, strlen(text), false);
        free(text);
    }
    return f;
}

bool wss_session_is_msgpack(const wss_session *s)
{
    return s->msgpack;
}

void wss_session_send_json(wss_session *s, json_t *j)
{
    wss_frame *f = j ? wss_frame_encode(j, s->msgpack) : NULL;
    json_decref(j);
    wss_session_send(s, f);
    wss_frame_unref(f);
}

static int on_writeable(wss_session *s)
{
    if (s->close_code) {
        lws_close_reason(s->wsi, (enum lws_close_status)s->close_code,
                         (unsigned char *)s->close_why, strlen(s->close_why));
        return -1;
    }
    wss_qitem *q = s->head;
    if (!q)
        return 0; /* a WRITEABLE nobody asked for */
    wss_frame *f = q->frame;
    int n = lws_write(s->wsi, f->data + LWS_PRE, f->len, f->binary ? LWS_WRITE_BINARY
                                                                     : LWS_WRITE_TEXT);
    if (n < (int)f->len)
        return -1; /* lws buffers short writes itself; less than that is an error */
    s->head = q->next;
    if (!s->head)
        s->tail = NULL;
    s->queued_bytes -= f->len;
    metrics_add(s->node->m_bytes_queued, -(double)f->len);
    metrics_inc(s->node->m_frames_out);
    wss_frame_unref(f);
    free(q);
    if (s->head)
        lws_callback_on_writable(s->wsi);
    return 0;
}

/* ---- opening ----------------------------------------------------------------------- */

static void session_load(wss_session *s);
static void on_grace(struct ev_loop *loop, ev_timer *t, int revents);

/* The bearer token of the upgrade: ?token= or the Authorization header. */
static bool upgrade_token(struct lws *wsi, char *out, size_t outlen)
{
    const char *t = lws_get_urlarg_by_name(wsi, "token=", out, (int)outlen);
    if (t && *t) {
        memmove(out, t, strlen(t) + 1);
        return true;
    }
    char auth[2048];
    if (lws_hdr_copy(wsi, auth, sizeof auth, WSI_TOKEN_HTTP_AUTHORIZATION) > 7 &&
        strncasecmp(auth, "Bearer ", 7) == 0) {
        snprintf(out, outlen, "%s", auth + 7);
        return true;
    }
    return false;
}

static wss_session *session_open(wss_node *node, struct lws *wsi)
{
    char token[2048], err[128] = "missing token";
    int64_t user = 0;
    if (!upgrade_token(wsi, token, sizeof token) ||
        jwt_verify(node->cfg->jwt_secret, node->secret_len, token, (int64_t)time(NULL), &user,
                   err, sizeof err) != CHORUS_OK) {
        log_info("wss: upgrade refused: %s", err);
        lws_close_reason(wsi, (enum lws_close_status)WSS_CLOSE_UNAUTHORIZED,
                         (unsigned char *)"unauthorized", 12);
        return NULL;
    }
    if (node->sessions >= node->capacity) {
        log_warn("wss: at capacity (%d sessions): upgrade closed with 4009", node->capacity);
        lws_close_reason(wsi, (enum lws_close_status)WSS_CLOSE_FULL, (unsigned char *)"full", 4);
        return NULL;
    }
    wss_session *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->node = node;
    s->wsi = wsi;
    s->user_id = user;
    const struct lws_protocols *p = lws_get_protocol(wsi);
    s->msgpack = p && p->name && strcmp(p->name, "chorus.msgpack") == 0;
    snprintf(s->id, sizeof s->id, "%s-%llu", node->node_id, ++node->next_session);
    node->sessions++;
    metrics_set(node->m_sessions, node->sessions);
    wss_session_send_json(s, json_pack("{s:s,s:s,s:s,s:i}", "t", "hello", "node",
                                       node->node_id, "session", s->id, "heartbeat_ms",
                                       WSS_HEARTBEAT_MS));
    s->holding = true;
    ev_timer_init(&s->grace, on_grace, WSS_RESUME_GRACE_MS / 1000.0, 0);
    s->grace.data = s;
    ev_timer_start(app_loop(node->app), &s->grace);
    session_load(s);
    return s;
}

static void held_clear(wss_session *s)
{
    while (s->held_head) {
        wss_held *h = s->held_head;
        s->held_head = h->next;
        wss_frame_unref(h->frame);
        free(h);
    }
    s->held_tail = NULL;
    s->held_bytes = 0;
}

static void session_destroy(wss_session *s)
{
    json_decref(s->resume_later);
    free(s->chans);
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

void wss_session_deliver(wss_session *s, int64_t ch, int64_t seq, wss_frame *f)
{
    if (!s->holding) {
        wss_session_send(s, f);
        return;
    }
    if (s->close_code)
        return;
    wss_held *h = malloc(sizeof *h);
    if (!h || s->held_bytes + f->len > (size_t)s->node->cfg->wss_queue_bytes) {
        free(h);
        held_clear(s);
        metrics_inc(s->node->m_closes_slow);
        session_close_later(s, WSS_CLOSE_TOO_SLOW, "too slow");
        return;
    }
    f->refs++;
    *h = (wss_held){ch, seq, f, NULL};
    if (s->held_tail)
        s->held_tail->next = h;
    else
        s->held_head = h;
    s->held_tail = h;
    s->held_bytes += f->len;
}

void wss_session_release_held(wss_session *s, int64_t (*resumed_max)(void *, int64_t),
                              void *arg)
{
    s->holding = false;
    s->resuming = false;
    ev_timer_stop(app_loop(s->node->app), &s->grace);
    for (wss_held *h = s->held_head; h; h = h->next)
        if (!resumed_max || h->seq > resumed_max(arg, h->ch))
            wss_session_send(s, h->frame);
    held_clear(s);
}

/* No resume came in time: the live events flow. */
static void on_grace(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    wss_session *s = t->data;
    if (s->holding && !s->resuming && !s->resume_later)
        wss_session_release_held(s, NULL, NULL);
}

/* The connection closed: leave the index; the memory goes now or, while the channel
 * list is still being read, when its reply comes. */
static void session_free(wss_session *s)
{
    for (int i = 0; i < s->nchans && s->node->fanout; i++)
        wss_fanout_remove(s->node->fanout, s->chans[i], s);
    s->nchans = 0;
    ev_timer_stop(app_loop(s->node->app), &s->grace);
    queue_clear(s);
    held_clear(s);
    free(s->rx);
    s->rx = NULL;
    s->node->sessions--;
    metrics_set(s->node->m_sessions, s->node->sessions);
    s->closed = true;
    if (s->pending == 0)
        session_destroy(s);
}

static void on_channels(void *arg, const int64_t *chans, int n, const char *err)
{
    wss_session *s = arg;
    if (!wss_session_reply_came(s))
        return;
    if (err) {
        log_warn("wss session %s: loading channels: %s", s->id, err);
        session_close_later(s, 1011, "channels unavailable");
        return;
    }
    s->chans = calloc((size_t)(n ? n : 1), sizeof *s->chans);
    for (int i = 0; s->chans && i < n && s->node->fanout; i++) {
        int64_t ch = chans[i];
        if (wss_fanout_add(s->node->fanout, ch, s) == CHORUS_OK)
            s->chans[s->nchans++] = ch;
    }
    json_t *later = s->resume_later;
    s->resume_later = NULL;
    if (later)
        wss_resume(s, later);
    json_decref(later);
}

/* Reads the user's channels (wss_members.c), then subscribes the session to them. */
static void session_load(wss_session *s)
{
    if (wss_members_load(s->node, s->user_id, on_channels, s) == CHORUS_OK)
        s->pending++;
    else
        session_close_later(s, WSS_CLOSE_FULL, "busy");
}

/* ---- client frames ----------------------------------------------------------------- */

static json_t *error_frame(const char *code, const char *message)
{
    return json_pack("{s:s,s:s,s:s}", "t", "error", "code", code, "message", message);
}

/* A whole client frame: one op. */
static void on_op(wss_session *s, const unsigned char *p, size_t n)
{
    json_t *j = NULL;
    if (s->msgpack) {
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        if (msgpack_unpack_next(&u, (const char *)p, n, NULL) == MSGPACK_UNPACK_SUCCESS)
            j = json_from_msgpack(&u.data);
        msgpack_unpacked_destroy(&u);
    } else {
        j = json_loadb((const char *)p, n, JSON_REJECT_DUPLICATES, NULL);
    }
    const char *op = json_string_value(json_object_get(j, "op"));
    if (!json_is_object(j) || !op) {
        wss_session_send_json(s, error_frame("bad_frame", json_is_object(j)
                                                              ? "the object has no \"op\""
                                                              : "a frame is one JSON object"));
    } else if (strcmp(op, "resume") == 0) {
        wss_resume(s, j);
    } else {
        if (s->holding && !s->resuming && !s->resume_later)
            wss_session_release_held(s, NULL, NULL); /* the first op was not a resume */
        if (strcmp(op, "ping") == 0)
            wss_session_send_json(s, json_pack("{s:s}", "t", "pong"));
        else
            wss_session_send_json(s, error_frame("unknown_op", "this op is not supported"));
    }
    json_decref(j);
}

static int on_receive(wss_session *s, const void *in, size_t len)
{
    if (s->rx_len + len > WSS_MAX_FRAME) {
        lws_close_reason(s->wsi, (enum lws_close_status)WSS_CLOSE_TOO_BIG,
                         (unsigned char *)"frame too big", 13);
        return -1;
    }
    unsigned char *rx = realloc(s->rx, s->rx_len + len + 1);
    if (!rx)
        return -1;
    s->rx = rx;
    memcpy(s->rx + s->rx_len, in, len);
    s->rx_len += len;
    if (!lws_is_final_fragment(s->wsi) || lws_remaining_packet_payload(s->wsi) > 0)
        return 0;
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
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return *slot ? on_writeable(*slot) : -1;
    case LWS_CALLBACK_CLOSED:
        if (*slot)
            session_free(*slot);
        *slot = NULL;
        return 0;
    default:
        return 0;
    }
}
