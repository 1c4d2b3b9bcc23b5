/* proxy.c - ws://<gateway>/ws?token=...: the WebSocket for clients that want one fixed
 * URL (API.md). The gateway picks a node as /realtime/connect would, opens its own
 * WebSocket to it with the client's subprotocol and token, and relays whole messages
 * both ways.
 *
 * Each direction has a bounded queue (wss_queue_bytes). When the queue towards the
 * client is full the gateway stops reading from the node (lws_rx_flow_control): the
 * node's own bounded queue then fills and closes the session with 4008, which reaches
 * the client like any close, so a slow client behind the proxy behaves as it would on
 * the node and holds no more memory here. The other way round, a client that sends
 * faster than the node reads is paused the same way. A close on either side closes the
 * other with the same code (after what is queued towards the client is written).
 * No node available, or the node unreachable: 4009, so the client retries.
 */
#include "proxy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chorus/httpd.h"
#include "chorus/log.h"
#include "chorus/metrics.h"
#include "chorus/status.h"
#include "chorus/wssreg.h"

#define PROXY_MAX_MESSAGE (4 * 1024 * 1024)

typedef struct msg {
    struct msg *next;
    bool binary;
    size_t len;
    unsigned char data[]; /* LWS_PRE + len */
} msg;

typedef struct queue {
    msg *head, *tail;
    size_t bytes;
} queue;

typedef struct side {
    struct lws *wsi;
    queue out;                 /* to write to this side */
    unsigned char *rx;         /* a message from this side, being reassembled */
    size_t rx_len;
    bool rx_binary;
    bool paused;               /* reading from this side stopped: the other is full */
    int close_code;            /* close this side at its next writeable */
    char close_why[124];
} side;

typedef struct relay {
    proxy *px;
    side down, up;             /* the client, the node */
    bool up_open;
} relay;

struct proxy {
    app *app;
    realtime *rt;
    size_t bound;
    int links;
    metrics_series *m_links, *m_paused, *m_unavailable;
};

/* ---- queues ------------------------------------------------------------------------- */

static bool enqueue(queue *q, const unsigned char *data, size_t len, bool binary)
{
    msg *m = malloc(sizeof *m + LWS_PRE + len);
    if (!m)
        return false;
    m->next = NULL;
    m->binary = binary;
    m->len = len;
    memcpy(m->data + LWS_PRE, data, len);
    if (q->tail)
        q->tail->next = m;
    else
        q->head = m;
    q->tail = m;
    q->bytes += len;
    return true;
}

static void queue_clear(queue *q)
{
    while (q->head) {
        msg *m = q->head;
        q->head = m->next;
        free(m);
    }
    q->tail = NULL;
    q->bytes = 0;
}

/* ---- closing ------------------------------------------------------------------------ */

static void close_side(side *s, int code, const char *why)
{
    if (!s->wsi || s->close_code)
        return;
    s->close_code = code;
    snprintf(s->close_why, sizeof s->close_why, "%s", why);
    lws_callback_on_writable(s->wsi);
    lws_set_timeout(s->wsi, PENDING_TIMEOUT_CLOSE_SEND, 5);
}

static void relay_free_if_done(relay *l)
{
    if (l->down.wsi || l->up.wsi)
        return;
    queue_clear(&l->down.out);
    queue_clear(&l->up.out);
    free(l->down.rx);
    free(l->up.rx);
    l->px->links--;
    metrics_set(l->px->m_links, l->px->links);
    free(l);
}

/* One side is gone: the other follows with its code (the client after its queue). */
static void side_gone(relay *l, side *gone, int code, const char *why)
{
    gone->wsi = NULL;
    side *other = gone == &l->down ? &l->up : &l->down;
    if (other->paused) {
        lws_rx_flow_control(other->wsi, 1);
        other->paused = false;
    }
    close_side(other, code ? code : 1001, why && *why ? why : "the other side closed");
    relay_free_if_done(l);
}

/* ---- relaying ----------------------------------------------------------------------- */

static side *peer(relay *l, side *s)
{
    return s == &l->down ? &l->up : &l->down;
}

/* A fragment from side s; a whole message goes to the other side's queue. */
static int on_rx(relay *l, side *s, struct lws *wsi, const void *in, size_t len)
{
    size_t limit = s == &l->down ? 65536 : PROXY_MAX_MESSAGE;
    if (s->rx_len == 0)
        s->rx_binary = lws_frame_is_binary(wsi);
    int whole = httpd_ws_collect(wsi, in, len, limit, &s->rx, &s->rx_len);
    if (whole <= 0)
        return whole;
    side *to = peer(l, s);
    bool ok = enqueue(&to->out, s->rx, s->rx_len, s->rx_binary);
    s->rx_len = 0;
    if (!ok)
        return -1;
    if (to->wsi && (to == &l->down || l->up_open))
        lws_callback_on_writable(to->wsi);
    if (to->out.bytes > l->px->bound && !s->paused) {
        lws_rx_flow_control(wsi, 0); /* the reader is slow: the writer waits */
        s->paused = true;
        metrics_inc(l->px->m_paused);
    }
    return 0;
}

static int on_writeable(relay *l, side *s)
{
    if (s->close_code && (s == &l->up || !s->out.head)) {
        lws_close_reason(s->wsi, (enum lws_close_status)s->close_code,
                         (unsigned char *)s->close_why, strlen(s->close_why));
        return -1;
    }
    msg *m = s->out.head;
    if (!m)
        return 0;
    if (lws_write(s->wsi, m->data + LWS_PRE, m->len, m->binary ? LWS_WRITE_BINARY
                                                                : LWS_WRITE_TEXT) < (int)m->len)
        return -1;
    s->out.head = m->next;
    if (!s->out.head)
        s->out.tail = NULL;
    s->out.bytes -= m->len;
    free(m);
    side *from = peer(l, s);
    if (from->paused && s->out.bytes <= l->px->bound / 2) {
        lws_rx_flow_control(from->wsi, 1);
        from->paused = false;
    }
    if (s->out.head || s->close_code)
        lws_callback_on_writable(s->wsi);
    return 0;
}

static int refuse(struct lws *wsi, int code, const char *why)
{
    lws_close_reason(wsi, (enum lws_close_status)code, (unsigned char *)why, strlen(why));
    return -1;
}

/* The upstream WebSocket to node n, with the client's token and subprotocol. */
static bool connect_up(relay *l, struct lws *down, const wssreg_node *n, const char *token)
{
    char host[128], path[2200];
    int port = 0;
    if (sscanf(n->url, "ws://%127[^:]:%d/", host, &port) != 2)
        return false;
    snprintf(path, sizeof path, "/ws?token=%s%s", token,
             httpd_ws_flag(down, "resume") ? "&resume=1" : ""); /* docs/WSS.md "Resume" */
    const struct lws_protocols *p = lws_get_protocol(down);
    bool msgpack = p && p->name && strcmp(p->name, "chorus.msgpack") == 0;
    struct lws_client_connect_info ci;
    memset(&ci, 0, sizeof ci);
    ci.context = lws_get_context(down);
    ci.vhost = lws_get_vhost(down);
    ci.address = host;
    ci.port = port;
    ci.path = path;
    ci.host = host;
    ci.origin = host;
    ci.protocol = msgpack ? "chorus.msgpack" : "chorus.json";
    ci.local_protocol_name = ci.protocol;
    ci.pwsi = &l->up.wsi;
    ci.retry_and_idle_policy = &httpd_idle_policy;
    struct lws *up = lws_client_connect_via_info(&ci);
    if (up)
        httpd_ws_bind(up, l); /* its user space is lws', freed with it, after the relay */
    return up != NULL;
}

static int open_link(proxy *px, struct lws *wsi, void **slot)
{
    char token[2048];
    if (!httpd_ws_token(wsi, token, sizeof token))
        return refuse(wsi, 4001, "unauthorized");
    const wssreg_node *n = realtime_pick(px->rt);
    relay *l = n ? calloc(1, sizeof *l) : NULL;
    if (!l) {
        metrics_inc(px->m_unavailable);
        return refuse(wsi, 4009, "no node available: retry");
    }
    l->px = px;
    l->down.wsi = wsi;
    if (!connect_up(l, wsi, n, token)) {
        free(l);
        metrics_inc(px->m_unavailable);
        return refuse(wsi, 4009, "node unreachable: retry");
    }
    *slot = l;
    px->links++;
    metrics_set(px->m_links, px->links);
    return 0;
}

/* ---- lws reasons -------------------------------------------------------------------- */

static int on_up(relay *l, struct lws *wsi, enum lws_callback_reasons reason, void *in,
                 size_t len)
{
    switch (reason) {
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        l->up_open = true;
        if (l->up.out.head || l->up.close_code)
            lws_callback_on_writable(wsi);
        return 0;
    case LWS_CALLBACK_CLIENT_RECEIVE:
        return on_rx(l, &l->up, wsi, in, len);
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        return on_writeable(l, &l->up);
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE: /* the node closed: the same to the client */
        if (len >= 2) {
            const unsigned char *b = in;
            char why[124];
            snprintf(why, sizeof why, "%.*s", (int)(len - 2 < 120 ? len - 2 : 120),
                     (const char *)b + 2);
            close_side(&l->down, b[0] << 8 | b[1], why);
        }
        return 0;
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        metrics_inc(l->px->m_unavailable);
        httpd_ws_bind(wsi, NULL);
        side_gone(l, &l->up, 4009, "node unreachable: retry");
        return 0;
    case LWS_CALLBACK_CLIENT_CLOSED:
    case LWS_CALLBACK_CLOSED:
        httpd_ws_bind(wsi, NULL);
        side_gone(l, &l->up, l->down.close_code ? l->down.close_code : 1001,
                  l->down.close_code ? l->down.close_why : "node went away");
        return 0;
    default:
        return 0;
    }
}

static int on_down(proxy *px, relay **slot, struct lws *wsi, enum lws_callback_reasons reason,
                   void *in, size_t len)
{
    relay *l = *slot;
    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        return 0;
    case LWS_CALLBACK_ESTABLISHED:
        return open_link(px, wsi, (void **)slot);
    case LWS_CALLBACK_RECEIVE:
        return l ? on_rx(l, &l->down, wsi, in, len) : -1;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return l ? on_writeable(l, &l->down) : -1;
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        if (l && len >= 2) {
            const unsigned char *b = in;
            close_side(&l->up, b[0] << 8 | b[1], "client closed");
        }
        return 0;
    case LWS_CALLBACK_CLOSED:
        if (l) {
            *slot = NULL;
            side_gone(l, &l->down, l->up.close_code ? l->up.close_code : 1001, "client went away");
        }
        return 0;
    default:
        return 0;
    }
}

int proxy_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                   size_t len)
{
    proxy *px = httpd_ws_arg(wsi);
    relay **slot = user;
    relay *l = slot ? *slot : NULL;
    if (l && wsi == l->up.wsi)
        return on_up(l, wsi, reason, in, len);
    if (reason == LWS_CALLBACK_CLIENT_CONNECTION_ERROR || reason == LWS_CALLBACK_CLIENT_CLOSED)
        return 0; /* an upstream whose relay already let go of it */
    return px ? on_down(px, slot, wsi, reason, in, len) : -1;
}

proxy *proxy_new(app *a, realtime *rt, httpd *h)
{
    proxy *px = calloc(1, sizeof *px);
    if (!px)
        return NULL;
    px->app = a;
    px->rt = rt;
    px->bound = (size_t)app_config(a)->wss_queue_bytes;
    px->m_links = metrics_gauge("chorus_gateway_ws_proxied",
                                "WebSocket sessions the gateway relays to a node");
    px->m_paused = metrics_counter("chorus_gateway_ws_proxy_pauses_total",
                                   "times a side was paused because the other was full");
    px->m_unavailable = metrics_counter("chorus_gateway_ws_proxy_unavailable_total",
                                        "proxied upgrades closed with 4009: no node reachable");
    httpd_set_ws_handler(h, proxy_callback, px);
    return px;
}

void proxy_free(proxy *px)
{
    free(px);
}
