/* httpd.h - an HTTP/1.1 listener on libwebsockets with a route table and async replies.
 *
 * Handlers are matched by method and path pattern ("/api/v1/workspaces/{ws}"). A path
 * that matches no pattern gets 404, a path that matches with another method 405, both
 * with the JSON error body of API.md. Request bodies are collected up to the process'
 * max_body_bytes (413 past it) before the handler runs.
 *
 * Lifetime rule: a handler receives a request and must answer it exactly once, either
 * before returning or later from any callback (after a Postgres or Redis reply). The
 * request stays valid until it is answered, even if the client has gone away in the
 * meantime: the answer is then dropped and the request freed. So async code may hold
 * the http_req pointer, and nothing else of lws, across loop turns.
 *
 * Metrics: chorus_http_requests_total{route,status} and
 * chorus_http_request_duration_seconds{route,status} (route is the pattern, so the label set
 * is bounded), chorus_http_in_flight (gauge: requests not yet answered),
 * chorus_http_rejected_total{reason} (draining, body_too_large).
 */
#ifndef CHORUS_HTTPD_H
#define CHORUS_HTTPD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <libwebsockets.h>

typedef struct httpd httpd;
typedef struct http_req http_req;

typedef void (*http_handler)(http_req *req, void *arg);

typedef struct httpd_opts {
    const char *bind;       /* listen address (an IP) */
    int port;
    const char *name;       /* vhost name and log prefix */
    size_t max_body_bytes;  /* 413 past this */
    int keepalive_s;        /* idle keep-alive connections are closed after this */
    int reserve_fds;        /* files kept free of connections (pools, clients); 0: 128 */
} httpd_opts;

/* Creates a listener as a vhost of ctx (created with LWS_SERVER_OPTION_EXPLICIT_VHOSTS).
 * Returns NULL if the port cannot be bound (logged). */
httpd *httpd_new(struct lws_context *ctx, const httpd_opts *opts);

/* Frees the route table and the listener's state. Call after the lws context is gone. */
void httpd_free(httpd *h);

int httpd_port(const httpd *h);

/* Adds a route. method is "GET", "POST", "PUT", "PATCH", "DELETE"; pattern segments in
 * braces are parameters. Routes are matched in the order they were added. Returns
 * CHORUS_OK or CHORUS_ERR (bad pattern, too many routes). */
int httpd_route(httpd *h, const char *method, const char *pattern, http_handler fn,
                void *arg);

/* WebSocket upgrades on this listener are passed to fn with the lws reasons of a
 * WebSocket connection (FILTER_PROTOCOL_CONNECTION, ESTABLISHED, RECEIVE,
 * SERVER_WRITEABLE, CLOSED). *user of the wsi points to a void * the handler may use;
 * CLOSED comes once while it is not NULL (also for connections lws cut without reporting
 * CLOSED): the handler frees its state there and sets it to NULL.
 * The listener accepts the subprotocols chorus.json and chorus.msgpack (and none).
 * Without a handler, upgrades are refused. */
void httpd_set_ws_handler(httpd *h, lws_callback_function *fn, void *arg);
/* The bearer token of a WebSocket upgrade: ?token= (browsers cannot set headers on
 * one) or the Authorization header. False when there is none. */
bool httpd_ws_token(struct lws *wsi, char *out, size_t outlen);
/* Whether the upgrade URL carries name=1 (resume=1, say). */
bool httpd_ws_flag(struct lws *wsi, const char *name);
/* The file number from which this listener closes new connections on accept: the
 * open-files limit less opts.reserve_fds; INT_MAX when the limit is unknown. */
int httpd_fd_ceiling(const httpd *h);
/* Gathers the fragments of one WebSocket message in *buf (grown as needed, with a spare
 * byte past *len): 1 when in completed a message (*len is its size; reset *len to 0
 * once it is used), 0 while more is due, -1 when the message would pass max bytes (the
 * connection is then closed with 1009) or memory ran out: return -1 from the callback. */
int httpd_ws_collect(struct lws *wsi, const void *in, size_t n, size_t max,
                     unsigned char **buf, size_t *len);
/* Binds a WebSocket the handler opened itself as a client on this listener's vhost
 * (lws_client_connect_via_info with local_protocol_name one of its protocols): its
 * reasons then reach the handler with *user == user. */
void httpd_ws_bind(struct lws *wsi, void *user);
/* The idle policy of every WebSocket on a listener, and of those opened as clients on
 * it (lws_client_connect_info.retry_and_idle_policy): lws' own validity timer off.
 * Liveness is the application's (the WSS node's idle timeout, docs/WSS.md); lws 4.1
 * keeps each socket's validity timer (default 300 s) in one list it inserts into in
 * sorted order from the head, so every session it establishes walks all the others'. */
extern const lws_retry_bo_t httpd_idle_policy;
void *httpd_ws_arg(struct lws *wsi);

/* Stops new requests: new connections are refused (503) and keep-alive ends. */
void httpd_drain(httpd *h);

/* --- the request, valid until answered --- */
const char *http_req_method(const http_req *r);
const char *http_req_path(const http_req *r);
/* The request id (the client's X-Request-Id if sane, else a new one); echoed in the
 * response header X-Request-Id and set as the log request id while the handler runs. */
const char *http_req_id(const http_req *r);
/* A path parameter by name ("ws" for {ws}); NULL if the pattern has none. */
const char *http_req_param(const http_req *r, const char *name);
/* A query argument (URL-decoded); NULL when absent. */
const char *http_req_query(const http_req *r, const char *name);
/* The Authorization header, or NULL. */
const char *http_req_authorization(const http_req *r);
const char *http_req_content_type(const http_req *r);
/* The body (NUL-terminated for convenience); len may be NULL. */
const char *http_req_body(const http_req *r, size_t *len);
/* False once the client has gone away: async handlers may skip work. */
bool http_req_alive(const http_req *r);
/* Data the handler attaches to the request (not freed by httpd). */
void http_req_set_data(http_req *r, void *data);
void *http_req_data(const http_req *r);

/* Adds a response header (copied), before answering. At most 8. */
int http_req_add_header(http_req *r, const char *name, const char *value);

/* Answers the request. body is copied. After this call r is gone. */
void http_respond(http_req *r, int status, const char *content_type, const char *body,
                  size_t len);
/* Answers with JSON (takes the reference of j). */
void http_respond_json(http_req *r, int status, json_t *j);
/* Answers with {"error":{"code":code,"message":message}}. */
void http_respond_error(http_req *r, int status, const char *code, const char *message);
/* The same with "field" in the error object when field is not NULL or empty (422). */
void http_respond_error_field(http_req *r, int status, const char *code, const char *message,
                              const char *field);
/* The client's address as text ("127.0.0.1"), for per-address limits; "" if unknown. */
const char *http_req_peer(const http_req *r);

#endif
