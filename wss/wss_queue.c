/* wss_queue.c - what a session sends: shared frames, the bounded outbound queue, the
 * hold queue of live events during a resume, and the writes to the socket.
 *
 * A frame with nothing queued ahead of it is written at once when the socket takes it
 * (write_now); otherwise it waits in the queue, written at SERVER_WRITEABLE, several
 * frames a turn while the socket takes them. The queue holds shared frames (wss_frame)
 * and is bounded in bytes (wss_queue_bytes): a session that would go past it is closed
 * with 4008 (the client resumes later), so one slow reader never holds memory or delays
 * the others. A close decided outside lws' callbacks is carried out at the next
 * WRITEABLE, where returning -1 is allowed.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "chorus/log.h"
#include "chorus/status.h"
#include "wss_internal.h"

/* ---- frames ------------------------------------------------------------------------ */

wss_frame *wss_frame_new(const void *data, size_t len, bool binary)
{
    wss_frame *f = malloc(sizeof *f + LWS_PRE + len);
    if (!f)
        return NULL;
    f->refs = 1;
    f->binary = binary;
    f->created_us = 0;
    f->len = len;
    memcpy(f->data + LWS_PRE, data, len);
    return f;
}

void wss_frame_unref(wss_frame *f)
{
    if (f && --f->refs == 0)
        free(f);
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

wss_frame *wss_frame_convert(const wss_frame *f)
{
    if (!f)
        return NULL;
    const char *p = (const char *)f->data + LWS_PRE;
    json_t *j = NULL;
    if (f->binary) {
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        if (msgpack_unpack_next(&u, p, f->len, NULL) == MSGPACK_UNPACK_SUCCESS)
            j = json_from_msgpack(&u.data);
        msgpack_unpacked_destroy(&u);
    } else {
        j = json_loadb(p, f->len, 0, NULL);
    }
    wss_frame *out = j ? wss_frame_encode(j, !f->binary) : NULL;
    if (out)
        out->created_us = f->created_us;
    json_decref(j);
    return out;
}

/* ---- closing ----------------------------------------------------------------------- */

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

void wss_session_close(wss_session *s, int code, const char *why)
{
    if (s->close_code || s->closed)
        return;
    s->close_code = code;
    s->close_why = why;
    queue_clear(s); /* nothing more goes out before the close frame */
    held_clear(s);
    lws_callback_on_writable(s->wsi);
    /* A peer that reads nothing never makes the socket writable again: cut it after
     * 5 s without the close frame rather than keep it for ever. */
    lws_set_timeout(s->wsi, PENDING_TIMEOUT_CLOSE_SEND, 5);
}

void wss_session_drain(wss_session *s, const char *why)
{
    if (s->close_code || s->closed || s->drain)
        return;
    s->drain = true;
    s->drain_why = why;
    held_clear(s); /* the client resumes them from the node it moves to */
    lws_callback_on_writable(s->wsi);
    lws_set_timeout(s->wsi, PENDING_TIMEOUT_CLOSE_SEND, 5);
}

static void close_too_slow(wss_session *s)
{
    metrics_inc(s->node->m_closes_slow);
    log_info("wss session %s (user %lld): outbound queue over %d bytes: closing 4008", s->id,
             (long long)s->user_id, s->node->cfg->wss_queue_bytes);
    wss_session_close(s, WSS_CLOSE_TOO_SLOW, "too slow");
}

/* ---- writing ---------------------------------------------------------------------- */

static double now_us(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec * 1e6 + (double)tv.tv_usec;
}

/* One whole frame to lws: false when the connection is broken. lws keeps the rest of a
 * short write itself and sends it before anything else. */
static bool write_frame(wss_session *s, const wss_frame *f)
{
    int n = lws_write(s->wsi, (unsigned char *)f->data + LWS_PRE, f->len,
                      f->binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT);
    if (n < (int)f->len)
        return false;
    if (f->created_us > 0)
        metrics_observe(s->node->m_latency, (now_us() - (double)f->created_us) / 1e6);
    metrics_inc(s->node->m_frames_out);
    return true;
}

/* The usual delivery, a live event to a session with nothing queued, goes to the socket
 * at once. Through the queue it cost a WRITEABLE round trip (two epoll_ctl and a pass of
 * the loop) per frame, most of a delivery's CPU (docs/BENCHMARKS.md). lws' rule of
 * writing only in WRITEABLE exists so that lws does not pile up unsent bytes: a write
 * the socket does not take whole, lws keeps and sends first at the next WRITEABLE, and
 * while it holds some (lws_partial_buffered, a flag) frames wait in our bounded queue.
 * So lws holds at most one frame. (lws_send_pipe_choked would also ask the kernel, a
 * poll per delivery: 50,000 system calls a second in the 100k load test, to spare the
 * rare frame that lands on a full socket a copy.) Not after the client's close frame,
 * which lws answers itself, nor before hello. */
static bool write_now(wss_session *s, wss_frame *f)
{
    if (s->head || !s->greeted || s->peer_closed || s->closed || lws_partial_buffered(s->wsi))
        return false;
    if (!write_frame(s, f)) /* the socket is broken: lws closes at the next service */
        wss_session_close(s, 1011, "write failed");
    return true;
}

/* ---- the outbound queue ------------------------------------------------------------ */

void wss_session_send(wss_session *s, wss_frame *f)
{
    if (!f || s->close_code || s->drain)
        return;
    if (write_now(s, f))
        return;
    if (s->queued_bytes + f->len > (size_t)s->node->cfg->wss_queue_bytes) {
        close_too_slow(s);
        return;
    }
    wss_qitem *q = malloc(sizeof *q);
    if (!q) {
        wss_session_close(s, 1011, "out of memory");
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

void wss_session_send_json(wss_session *s, json_t *j)
{
    wss_frame *f = j ? wss_frame_encode(j, s->msgpack) : NULL;
    json_decref(j);
    wss_session_send(s, f);
    wss_frame_unref(f);
}

void wss_session_send_error(wss_session *s, const char *code, const char *message)
{
    wss_session_send_json(s, json_pack("{s:s,s:s,s:s}", "t", "error", "code", code,
                                       "message", message));
}

void wss_session_greet(wss_session *s)
{
    json_t *j = json_pack("{s:s,s:s,s:s,s:i}", "t", "hello", "node", s->node->node_id,
                          "session", s->id, "heartbeat_ms", s->node->cfg->wss_heartbeat_ms);
    wss_frame *f = j ? wss_frame_encode(j, s->msgpack) : NULL;
    json_decref(j);
    wss_qitem *q = f ? malloc(sizeof *q) : NULL;
    if (!q) {
        wss_frame_unref(f);
        wss_session_close(s, 1011, "out of memory");
        return;
    }
    q->frame = f; /* the reference encode gave */
    q->next = s->head;
    s->head = q;
    if (!s->tail)
        s->tail = q;
    s->queued_bytes += f->len;
    metrics_add(s->node->m_bytes_queued, (double)f->len);
    s->greeted = true;
    if (!s->resume_promised)
        ev_timer_start(app_loop(s->node->app), &s->grace);
    lws_callback_on_writable(s->wsi);
}

int wss_session_writeable(wss_session *s)
{
    /* A drain before hello closes at once: the client has not started. */
    if (s->close_code || (s->drain && (!s->head || !s->greeted))) {
        int code = s->close_code ? s->close_code : WSS_CLOSE_FULL;
        const char *why = s->close_code ? s->close_why : s->drain_why;
        lws_close_reason(s->wsi, (enum lws_close_status)code, (unsigned char *)why,
                         strlen(why));
        return -1;
    }
    if (!s->greeted)
        return 0; /* before hello */
    /* A backlog (a resume's rows, a burst on a full socket) goes out several frames a
     * turn while the socket takes them, not one frame per pass of the loop. */
    for (int i = 0; s->head && i < WSS_WRITES_PER_TURN; i++) {
        if (i > 0 && lws_send_pipe_choked(s->wsi))
            break;
        wss_qitem *q = s->head;
        wss_frame *f = q->frame;
        if (!write_frame(s, f))
            return -1;
        s->head = q->next;
        if (!s->head)
            s->tail = NULL;
        s->queued_bytes -= f->len;
        metrics_add(s->node->m_bytes_queued, -(double)f->len);
        wss_frame_unref(f);
        free(q);
    }
    if (s->head || s->drain)
        lws_callback_on_writable(s->wsi);
    return 0;
}

/* ---- live events and the hold queue ------------------------------------------------ */

static bool holding(const wss_session *s)
{
    return s->awaiting || s->resuming;
}

static void hold(wss_session *s, int64_t ch, int64_t seq, wss_frame *f)
{
    wss_held *h = malloc(sizeof *h);
    if (!h || s->held_bytes + f->len > (size_t)s->node->cfg->wss_queue_bytes) {
        free(h);
        close_too_slow(s);
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

void wss_session_deliver(wss_session *s, int64_t ch, int64_t seq, wss_frame *f,
                         int64_t *seen)
{
    if (s->close_code || s->drain)
        return;
    if (holding(s)) {
        hold(s, ch, seq, f);
    } else if (seq > *seen) {
        *seen = seq;
        wss_session_send(s, f);
    }
}

void wss_session_deliver_now(wss_session *s, wss_frame *f)
{
    wss_session_send(s, f);
}

void wss_session_send_seq(wss_session *s, int64_t ch, int64_t seq, wss_frame *f)
{
    wss_fanout *fo = s->node->fanout;
    if (!fo || !wss_session_has(s, ch) || seq <= wss_fanout_seen(fo, ch, s))
        return; /* left the channel meanwhile, or sent already */
    wss_fanout_set_seen(fo, ch, s, seq);
    wss_session_send(s, f);
}

/* Sends the held events that are still new to the session, once nothing holds them. */
static void release(wss_session *s)
{
    if (holding(s))
        return;
    ev_timer_stop(app_loop(s->node->app), &s->grace);
    wss_held *h = s->held_head;
    s->held_head = s->held_tail = NULL;
    s->held_bytes = 0;
    while (h) {
        wss_held *next = h->next;
        wss_session_send_seq(s, h->ch, h->seq, h->frame);
        wss_frame_unref(h->frame);
        free(h);
        h = next;
    }
}

void wss_session_resume_done(wss_session *s)
{
    s->resuming = false;
    release(s);
}

void wss_session_end_await(wss_session *s)
{
    s->awaiting = false;
    release(s);
}

void wss_session_queue_free(wss_session *s)
{
    queue_clear(s);
    held_clear(s);
}
