/* httpd.c - the libwebsockets side of the HTTP listener: vhost, callback, writing. */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>

#include "chorus/log.h"
#include "chorus/status.h"
#include "httpd_internal.h"

/* Response bytes handed to lws per WRITEABLE: big bodies go out over several turns so
 * one response never monopolises the loop. */
#define HTTPD_WRITE_CHUNK 65536
/* Bytes of a WebSocket frame lws hands over at a time (fill_protocols). */
#define HTTPD_WS_RX_BUFFER 256

/* No validity pings or hang-ups from lws (httpd.h); a retry table because lws reads
 * one for client connections. */
static const uint32_t retry_ms[] = {1000};
const lws_retry_bo_t httpd_idle_policy = {
    .retry_ms_table = retry_ms,
    .retry_ms_table_count = 1,
    .conceal_count = 1,
};

static int callback_http(struct lws *wsi, enum lws_callback_reasons reason, void *user,
                         void *in, size_t len);

static httpd *httpd_of(struct lws *wsi)
{
    const struct lws_protocols *p = lws_get_protocol(wsi);
    return p ? p->user : NULL;
}

void *httpd_ws_arg(struct lws *wsi)
{
    httpd *h = httpd_of(wsi);
    return h ? h->ws_arg : NULL;
}

bool httpd_ws_token(struct lws *wsi, char *out, size_t outlen)
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

bool httpd_ws_flag(struct lws *wsi, const char *name)
{
    /* lws copies each argument whole ("name=value") and stops at the first that does
     * not fit, so the buffer is as large as the token that comes before */
    char v[2048], key[64];
    snprintf(key, sizeof key, "%s=", name);
    const char *r = lws_get_urlarg_by_name(wsi, key, v, sizeof v);
    return r && strcmp(r, "1") == 0;
}

int httpd_fd_ceiling(const httpd *h)
{
    return h->fd_ceiling;
}

int httpd_ws_collect(struct lws *wsi, const void *in, size_t n, size_t max,
                     unsigned char **buf, size_t *len)
{
    if (*len + n > max) {
        lws_close_reason(wsi, (enum lws_close_status)1009, (unsigned char *)"frame too big", 13);
        return -1;
    }
    unsigned char *b = realloc(*buf, *len + n + 1);
    if (!b)
        return -1;
    *buf = b;
    memcpy(b + *len, in, n);
    *len += n;
    return lws_is_final_fragment(wsi) && lws_remaining_packet_payload(wsi) == 0;
}

void httpd_ws_bind(struct lws *wsi, void *user)
{
    httpd_pss *pss = lws_wsi_user(wsi);
    if (pss)
        pss->ws_user = user;
}

/* A connection accepted on a file this high means the process is close to its
 * open-files limit (files are numbered lowest free first), so it is closed at once and
 * the files left stay for what the process cannot do without: its Postgres pool, Redis
 * clients, pipes. Without it the 100k load test drove a gateway to EMFILE, where it
 * could not reconnect to Redis. (lws' own fd_limit_per_thread would do this, but any
 * value under the limit switches lws to a linear search of its connections on every
 * event.) */
static int fd_ceiling(int reserve)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY ||
        rl.rlim_cur > INT_MAX)
        return INT_MAX;
    int limit = (int)rl.rlim_cur;
    return limit > 2 * reserve ? limit - reserve : limit / 2;
}

static void fill_protocols(httpd *h)
{
    /* One callback for all: a WebSocket upgrade without a subprotocol lands on the
     * first protocol, so the HTTP callback must forward WebSocket reasons anyway. */
    static const char *const names[] = {"http", "chorus.json", "chorus.msgpack"};
    memset(h->protocols, 0, sizeof h->protocols);
    for (int i = 0; i < 3; i++) {
        h->protocols[i].name = names[i];
        h->protocols[i].callback = callback_http;
        h->protocols[i].per_session_data_size = sizeof(httpd_pss);
        /* lws gives every WebSocket session a receive buffer of this size for its whole
         * life. At 64 KiB it cost 4.3 KiB of resident memory a session (the pages a
         * frame touches), more than all the rest of a session; the ops clients send
         * are small, and a larger frame arrives in pieces that httpd_ws_collect joins.
         * Sends are not cut to it: that is tx_packet_size. (docs/BENCHMARKS.md) */
        h->protocols[i].rx_buffer_size = HTTPD_WS_RX_BUFFER;
        h->protocols[i].tx_packet_size = 65536;
        h->protocols[i].user = h;
    }
}

httpd *httpd_new(struct lws_context *ctx, const httpd_opts *opts)
{
    httpd *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->name = strdup(opts->name ? opts->name : "http");
    h->bind = strdup(opts->bind ? opts->bind : "127.0.0.1");
    h->port = opts->port;
    h->max_body = opts->max_body_bytes ? opts->max_body_bytes : 1048576;
    h->fd_ceiling = fd_ceiling(opts->reserve_fds > 0 ? opts->reserve_fds : 128);
    fill_protocols(h);
    httpd_metrics_init(h);

    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.vhost_name = h->name;
    info.port = opts->port;
    info.iface = h->bind;
    info.protocols = h->protocols;
    info.keepalive_timeout = opts->keepalive_s > 0 ? opts->keepalive_s : 30;
    info.timeout_secs = 30;
    info.retry_and_idle_policy = &httpd_idle_policy;
    info.options = LWS_SERVER_OPTION_DISABLE_IPV6 | LWS_SERVER_OPTION_VALIDATE_UTF8;
    h->vhost = lws_create_vhost(ctx, &info);
    if (!h->vhost) {
        log_error("%s: cannot listen on %s:%d", h->name, h->bind, h->port);
        httpd_free(h);
        return NULL;
    }
    log_info("%s: listening on http://%s:%d", h->name, h->bind, h->port);
    return h;
}

void httpd_free(httpd *h)
{
    if (!h)
        return;
    for (int i = 0; i < h->nroutes; i++) {
        free(h->routes[i].pattern);
        for (int s = 0; s < h->routes[i].nsegments; s++)
            free(h->routes[i].segments[s]);
    }
    free(h->name);
    free(h->bind);
    free(h);
}

int httpd_port(const httpd *h)
{
    return h->port;
}

void httpd_set_ws_handler(httpd *h, lws_callback_function *fn, void *arg)
{
    h->ws_fn = fn;
    h->ws_arg = arg;
}

void httpd_drain(httpd *h)
{
    h->draining = true;
}

/* The headers into [*p, end); false when they do not fit. */
static bool add_headers(struct lws *wsi, http_req *r, unsigned char **pp, unsigned char *end)
{
    unsigned char **p = pp;
    if (lws_add_http_common_headers(wsi, (unsigned int)r->status, r->ctype_out,
                                    r->whole ? r->whole_len : r->resp.len, p, end))
        return false;
    if (lws_add_http_header_by_name(wsi, (const unsigned char *)"x-request-id:",
                                    (const unsigned char *)r->id, (int)strlen(r->id), p,
                                    end))
        return false;
    for (int i = 0; i < r->nheaders; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s:", r->headers[i].name);
        if (lws_add_http_header_by_name(wsi, (const unsigned char *)name,
                                        (const unsigned char *)r->headers[i].value,
                                        (int)strlen(r->headers[i].value), p, end))
            return false;
    }
    return !(r->close_after &&
             lws_add_http_header_by_name(wsi, (const unsigned char *)"connection:",
                                         (const unsigned char *)"close", 5, p, end));
}

static int write_headers(struct lws *wsi, http_req *r)
{
    unsigned char buffer[LWS_PRE + HTTPD_HEADER_ROOM];
    unsigned char *start = buffer + LWS_PRE, *p = start, *end = buffer + sizeof buffer;
    if (!add_headers(wsi, r, &p, end) || lws_finalize_write_http_header(wsi, start, &p, end))
        return -1;
    r->headers_sent = true;
    return 0;
}

/* A small response goes out as one write, headers and body together: one send and one
 * WRITEABLE per request instead of two of each. The headers are made in a scratch
 * buffer and moved right in front of the body (http_respond left room for them). */
static int write_whole(struct lws *wsi, http_req *r)
{
    unsigned char hdr[HTTPD_HEADER_ROOM], *p = hdr, *end = hdr + sizeof hdr;
    r->headers_sent = true;
    if (!add_headers(wsi, r, &p, end) || lws_finalize_http_header(wsi, &p, end))
        return -1;
    size_t hlen = (size_t)(p - hdr);
    unsigned char *body = r->whole + LWS_PRE + HTTPD_HEADER_ROOM, *start = body - hlen;
    memcpy(start, hdr, hlen);
    size_t n = hlen + r->whole_len;
    return lws_write(wsi, start, n, LWS_WRITE_HTTP_HEADERS) == (int)n ? 0 : -1;
}

/* Ends the transaction: returns -1 when lws should close the connection. */
static int finish(struct lws *wsi, httpd_pss *pss, http_req *r)
{
    bool close_after = r->close_after || r->h->draining;
    httpd_req_observe(r);
    pss->req = NULL;
    httpd_req_free(r);
    if (close_after)
        return -1;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static int on_writeable(struct lws *wsi, httpd_pss *pss)
{
    http_req *r = pss->req;
    if (!r || !r->answered)
        return 0; /* a WRITEABLE we did not ask for */
    if (!r->headers_sent && r->whole)
        return write_whole(wsi, r) ? -1 : finish(wsi, pss, r);
    if (!r->headers_sent) {
        if (write_headers(wsi, r))
            return -1;
        if (r->resp.len == 0)
            return finish(wsi, pss, r);
        lws_callback_on_writable(wsi);
        return 0;
    }
    size_t left = r->resp.len - r->resp_off;
    size_t n = left > HTTPD_WRITE_CHUNK ? HTTPD_WRITE_CHUNK : left;
    bool last = n == left;
    unsigned char *chunk = malloc(LWS_PRE + n);
    if (!chunk)
        return -1;
    memcpy(chunk + LWS_PRE, r->resp.data + r->resp_off, n);
    int w = lws_write(wsi, chunk + LWS_PRE, n, last ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP);
    free(chunk);
    if (w < 0)
        return -1;
    r->resp_off += n;
    if (last)
        return finish(wsi, pss, r);
    lws_callback_on_writable(wsi);
    return 0;
}

static void reject_early(http_req *r, int status, const char *code, const char *msg,
                         const char *reason)
{
    metrics_inc(metrics_with1(r->h->m_rejected, reason));
    r->close_after = true;
    http_respond_error(r, status, code, msg);
}

static int on_http(struct lws *wsi, httpd_pss *pss, httpd *h)
{
    http_req *r = httpd_req_new(h, wsi);
    if (!r)
        return -1;
    pss->req = r;
    if (httpd_req_parse(r, wsi) != CHORUS_OK) {
        reject_early(r, 400, "bad_request", "unreadable request line or headers", "bad_request");
        return 0;
    }
    if (h->draining) {
        http_req_add_header(r, "retry-after", "1");
        reject_early(r, 503, "draining", "this node is shutting down", "draining");
        return 0;
    }
    long long clen = -1;
    char tmp[32];
    if (lws_hdr_copy(wsi, tmp, sizeof tmp, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0)
        clen = atoll(tmp);
    if (clen > (long long)h->max_body) {
        reject_early(r, 413, "body_too_large", "request body is larger than allowed",
                     "body_too_large");
        return 0;
    }
    if (clen > 0) {
        r->expect_body = true; /* dispatched at BODY_COMPLETION */
        return 0;
    }
    /* A write without Content-Length (curl -X POST with no data, or a chunked body,
     * which we do not take): lws would go on waiting for a body that never ends, so the
     * request is answered as bodiless and the connection closed after it. */
    if (clen < 0 && strcmp(http_req_method(r), "GET") != 0 &&
        strcmp(http_req_method(r), "HEAD") != 0)
        r->close_after = true;
    httpd_dispatch(r);
    return 0;
}

static int on_body(httpd_pss *pss, const void *in, size_t len)
{
    http_req *r = pss->req;
    if (!r || r->answered || !r->expect_body)
        return 0;
    if (buf_append(&r->body, in, len) != CHORUS_OK) {
        r->expect_body = false;
        reject_early(r, 413, "body_too_large", "request body is larger than allowed",
                     "body_too_large");
    }
    return 0;
}

static int on_body_done(httpd_pss *pss)
{
    http_req *r = pss->req;
    if (!r || r->answered || !r->expect_body)
        return 0;
    r->expect_body = false;
    httpd_dispatch(r);
    return 0;
}

/* The client went away: a request still with its handler is orphaned (the handler
 * frees it when it answers); an answered one is freed here. */
static void on_drop(httpd_pss *pss)
{
    http_req *r = pss->req;
    if (!r)
        return;
    pss->req = NULL;
    if (r->answered) {
        httpd_req_observe(r);
        httpd_req_free(r);
    } else {
        r->wsi = NULL;
    }
}

static bool is_ws_reason(enum lws_callback_reasons reason)
{
    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
    case LWS_CALLBACK_ESTABLISHED:
    case LWS_CALLBACK_RECEIVE:
    case LWS_CALLBACK_SERVER_WRITEABLE:
    case LWS_CALLBACK_CLOSED:
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
    /* the client side of a WebSocket the handler opened itself (the gateway's relay) */
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
    case LWS_CALLBACK_CLIENT_RECEIVE:
    case LWS_CALLBACK_CLIENT_WRITEABLE:
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
    case LWS_CALLBACK_CLIENT_CLOSED:
        return true;
    default:
        return false;
    }
}

static int callback_http(struct lws *wsi, enum lws_callback_reasons reason, void *user,
                         void *in, size_t len)
{
    httpd_pss *pss = user;
    httpd *h = httpd_of(wsi);
    /* Every connection ends here; a WebSocket session whose end lws did not report
     * as CLOSED (a connection cut by an lws timeout) is handed over as CLOSED now. */
    if (h && reason == LWS_CALLBACK_WSI_DESTROY && pss && pss->ws_user && h->ws_fn)
        return h->ws_fn(wsi, LWS_CALLBACK_CLOSED, &pss->ws_user, NULL, 0);
    if (h && is_ws_reason(reason)) {
        /* Draining refuses new upgrades only: the sessions already open still get their
         * reasons, CLOSED above all, or their state would never be freed. */
        bool refuse = !h->ws_fn || (h->draining && reason == LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION);
        if (refuse)
            return reason == LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION ? 1 : -1;
        return h->ws_fn(wsi, reason, pss ? &pss->ws_user : NULL, in, len);
    }
    switch (reason) {
    case LWS_CALLBACK_FILTER_NETWORK_CONNECTION:
        if (h && (int)(intptr_t)in >= h->fd_ceiling) {
            metrics_inc(h->m_refused);
            return 1; /* lws closes it */
        }
        return 0;
    case LWS_CALLBACK_HTTP:
        return on_http(wsi, pss, h);
    case LWS_CALLBACK_HTTP_BODY:
        return on_body(pss, in, len);
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        return on_body_done(pss);
    case LWS_CALLBACK_HTTP_WRITEABLE:
        return pss ? on_writeable(wsi, pss) : 0;
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
    case LWS_CALLBACK_CLOSED_HTTP:
        if (pss)
            on_drop(pss);
        return 0;
    default:
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}
