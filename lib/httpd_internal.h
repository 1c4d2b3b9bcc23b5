/* httpd_internal.h - what httpd.c (lws glue) and httpd_req.c (requests) share. */
#ifndef CHORUS_HTTPD_INTERNAL_H
#define CHORUS_HTTPD_INTERNAL_H

#include "chorus/buf.h"
#include "chorus/httpd.h"
#include "chorus/metrics.h"

#define HTTPD_MAX_ROUTES 128
#define HTTPD_MAX_SEGMENTS 16
#define HTTPD_MAX_QUERY 32
#define HTTPD_MAX_HEADERS 8

typedef struct httpd_route_def {
    char method[8];
    char *pattern;
    char *segments[HTTPD_MAX_SEGMENTS]; /* "{name}" marks a parameter */
    int nsegments;
    http_handler fn;
    void *arg;
} httpd_route_def;

struct httpd {
    struct lws_vhost *vhost;
    struct lws_protocols protocols[4];
    char *name;
    char *bind;
    int port;
    size_t max_body;
    int fd_ceiling;         /* connections on a file at or past this are closed at once */
    bool draining;
    httpd_route_def routes[HTTPD_MAX_ROUTES];
    int nroutes;
    lws_callback_function *ws_fn;
    void *ws_arg;
    /* Registered per server, not in statics: they must follow metrics_reset(). */
    metrics_family *m_requests, *m_duration, *m_rejected;
    metrics_series *m_in_flight, *m_refused;
};

/* Registers (or finds) the HTTP metric families of h. */
void httpd_metrics_init(httpd *h);

typedef struct http_kv {
    char *name;
    char *value;
} http_kv;

struct http_req {
    httpd *h;
    struct lws *wsi;          /* NULL once the client has gone away */
    char method[8];
    char *path;
    char *path_copy;          /* segments of the path, split in place for params */
    const httpd_route_def *route;
    http_kv params[HTTPD_MAX_SEGMENTS];
    int nparams;
    http_kv query[HTTPD_MAX_QUERY];
    int nquery;
    char *authorization;
    char *content_type;
    char id[33];
    char peer[48];            /* client address, for per-address rate limits */
    buf body;
    bool expect_body;
    bool answered;
    bool close_after;         /* the connection cannot be reused (unread body) */
    void *data;
    double started;
    /* the answer */
    int status;
    http_kv headers[HTTPD_MAX_HEADERS];
    int nheaders;
    char *ctype_out;
    buf resp;
    size_t resp_off;
    /* A body that goes out in one write (at most HTTPD_WHOLE_MAX) lives here instead of
     * resp, after room for LWS_PRE and the headers, so it is copied once. */
    unsigned char *whole;
    size_t whole_len;
    bool headers_sent;
};

/* Per-connection data lws allocates for every wsi of the listener. */
/* Responses up to this size go out as one write, headers and body together. */
#define HTTPD_WHOLE_MAX 65536
#define HTTPD_HEADER_ROOM 2048

typedef struct httpd_pss {
    http_req *req;
    void *ws_user;
} httpd_pss;

http_req *httpd_req_new(httpd *h, struct lws *wsi);
void httpd_req_free(http_req *r);
/* Fills method, path, query, headers from the wsi. CHORUS_ERR on unusable input. */
int httpd_req_parse(http_req *r, struct lws *wsi);
/* Finds the route and runs its handler (or answers 404/405). */
void httpd_dispatch(http_req *r);
/* Records the metrics of a finished request. */
void httpd_req_observe(http_req *r);
double httpd_now(void);

#endif
