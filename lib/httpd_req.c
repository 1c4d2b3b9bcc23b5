/* httpd_req.c - HTTP requests: parsing, routing, answering, accessors. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chorus/log.h"
#include "chorus/status.h"
#include "httpd_internal.h"

void httpd_metrics_init(httpd *h)
{
    h->m_requests = metrics_family_new(METRICS_COUNTER, "chorus_http_requests_total",
                                    "HTTP requests answered, by route pattern and status",
                                    "route,status", NULL, 0);
    h->m_duration = metrics_family_new(METRICS_HISTOGRAM, "chorus_http_request_duration_seconds",
                                    "Time from request to answer, by route pattern and status",
                                    "route,status",
                                    NULL, 0);
    h->m_in_flight = metrics_gauge("chorus_http_in_flight", "HTTP requests not yet answered");
    h->m_refused = metrics_counter("chorus_http_connections_refused_total",
                                   "connections closed on accept: the process was near its "
                                   "open-files limit");
    h->m_rejected = metrics_family_new(METRICS_COUNTER, "chorus_http_rejected_total",
                                       "HTTP requests refused before routing", "reason",
                                       NULL, 0);
}

double httpd_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

http_req *httpd_req_new(httpd *h, struct lws *wsi)
{
    http_req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->h = h;
    r->wsi = wsi;
    r->started = httpd_now();
    buf_init(&r->body, h->max_body);
    buf_init(&r->resp, 0);
    metrics_add(h->m_in_flight, 1);
    return r;
}

static void free_kv(http_kv *kv, int n)
{
    for (int i = 0; i < n; i++) {
        free(kv[i].name);
        free(kv[i].value);
    }
}

void httpd_req_free(http_req *r)
{
    free(r->path);
    free(r->path_copy);
    free_kv(r->query, r->nquery);
    free_kv(r->headers, r->nheaders);
    for (int i = 0; i < r->nparams; i++)
        free(r->params[i].value);
    free(r->authorization);
    free(r->content_type);
    free(r->ctype_out);
    buf_free(&r->body);
    buf_free(&r->resp);
    free(r->whole);
    metrics_add(r->h->m_in_flight, -1);
    free(r);
}

static char *copy_header(struct lws *wsi, enum lws_token_indexes tok)
{
    int n = lws_hdr_total_length(wsi, tok);
    if (n <= 0)
        return NULL;
    char *s = malloc((size_t)n + 1);
    if (s && lws_hdr_copy(wsi, s, n + 1, tok) < 0) {
        free(s);
        return NULL;
    }
    return s;
}

static const char *method_name(int m)
{
    switch (m) {
    case LWSHUMETH_GET: return "GET";
    case LWSHUMETH_POST: return "POST";
    case LWSHUMETH_PUT: return "PUT";
    case LWSHUMETH_PATCH: return "PATCH";
    case LWSHUMETH_DELETE: return "DELETE";
    case LWSHUMETH_OPTIONS: return "OPTIONS";
    case LWSHUMETH_HEAD: return "HEAD";
    default: return NULL;
    }
}

static void parse_query(http_req *r, struct lws *wsi)
{
    char frag[2048];
    for (int i = 0; r->nquery < HTTPD_MAX_QUERY; i++) {
        int n = lws_hdr_copy_fragment(wsi, frag, sizeof frag, WSI_TOKEN_HTTP_URI_ARGS, i);
        if (n < 0)
            break;
        char *eq = strchr(frag, '=');
        if (eq)
            *eq = '\0';
        r->query[r->nquery].name = strdup(frag);
        r->query[r->nquery].value = strdup(eq ? eq + 1 : "");
        r->nquery++;
    }
}

/* A client's X-Request-Id is kept when it is short and plain, so ids can be followed
 * across services; anything else gets a fresh id. */
static void take_request_id(http_req *r, struct lws *wsi)
{
    char rid[64];
    int n = lws_hdr_custom_copy(wsi, rid, sizeof rid, "x-request-id:", 13);
    bool ok = n > 0 && n <= 32;
    for (int i = 0; ok && i < n; i++)
        ok = isalnum((unsigned char)rid[i]) || rid[i] == '-' || rid[i] == '_';
    if (ok)
        memcpy(r->id, rid, (size_t)n + 1);
    else
        log_new_request_id(r->id);
}

int httpd_req_parse(http_req *r, struct lws *wsi)
{
    char *uri = NULL;
    int urilen = 0;
    int m = lws_http_get_uri_and_method(wsi, &uri, &urilen);
    const char *name = method_name(m);
    take_request_id(r, wsi);
    if (!lws_get_peer_simple(wsi, r->peer, sizeof r->peer))
        r->peer[0] = '\0';
    snprintf(r->method, sizeof r->method, "%s", name ? name : "?");
    r->path = uri ? strndup(uri, (size_t)urilen) : strdup("/");
    if (!name || !r->path || r->path[0] != '/')
        return CHORUS_ERR;
    parse_query(r, wsi);
    r->authorization = copy_header(wsi, WSI_TOKEN_HTTP_AUTHORIZATION);
    r->content_type = copy_header(wsi, WSI_TOKEN_HTTP_CONTENT_TYPE);
    return CHORUS_OK;
}

/* Matches the path against one route, filling params on success. */
static bool route_match(http_req *r, const httpd_route_def *rt)
{
    free(r->path_copy);
    r->path_copy = strdup(r->path);
    if (!r->path_copy)
        return false;
    for (int i = 0; i < r->nparams; i++)
        free(r->params[i].value);
    r->nparams = 0;
    char *save = NULL;
    int i = 0;
    for (char *seg = strtok_r(r->path_copy, "/", &save); seg;
         seg = strtok_r(NULL, "/", &save), i++) {
        if (i >= rt->nsegments)
            return false;
        const char *want = rt->segments[i];
        if (want[0] == '{') {
            r->params[r->nparams].name = rt->segments[i]; /* borrowed from the route */
            r->params[r->nparams].value = strdup(seg);
            r->nparams++;
        } else if (strcmp(want, seg) != 0) {
            return false;
        }
    }
    return i == rt->nsegments;
}

void httpd_dispatch(http_req *r)
{
    httpd *h = r->h;
    char allow[64] = "";
    for (int i = 0; i < h->nroutes; i++) {
        const httpd_route_def *rt = &h->routes[i];
        if (!route_match(r, rt))
            continue;
        if (strcmp(rt->method, r->method) != 0) {
            size_t n = strlen(allow);
            snprintf(allow + n, sizeof allow - n, "%s%s", n ? ", " : "", rt->method);
            continue;
        }
        r->route = rt;
        log_set_request_id(r->id);
        rt->fn(r, rt->arg);
        log_set_request_id(NULL);
        return;
    }
    if (allow[0]) {
        http_req_add_header(r, "allow", allow);
        http_respond_error(r, 405, "method_not_allowed", "this path does not take that method");
    } else
        http_respond_error(r, 404, "not_found", "no such route");
}

int httpd_route(httpd *h, const char *method, const char *pattern, http_handler fn,
                void *arg)
{
    if (h->nroutes >= HTTPD_MAX_ROUTES || pattern[0] != '/' || strlen(method) >= 8)
        return CHORUS_ERR;
    httpd_route_def *rt = &h->routes[h->nroutes];
    memset(rt, 0, sizeof *rt);
    snprintf(rt->method, sizeof rt->method, "%s", method);
    rt->pattern = strdup(pattern);
    char *copy = strdup(pattern), *save = NULL;
    for (char *seg = strtok_r(copy, "/", &save); seg; seg = strtok_r(NULL, "/", &save)) {
        if (rt->nsegments >= HTTPD_MAX_SEGMENTS) {
            free(copy);
            return CHORUS_ERR;
        }
        /* Parameters are stored without braces' contents check beyond the marker. */
        rt->segments[rt->nsegments++] = strdup(seg);
    }
    free(copy);
    rt->fn = fn;
    rt->arg = arg;
    h->nroutes++;
    return CHORUS_OK;
}

void httpd_req_observe(http_req *r)
{
    const char *route = r->route ? r->route->pattern : "unmatched";
    char status[8];
    snprintf(status, sizeof status, "%d", r->status);
    metrics_inc(metrics_with2(r->h->m_requests, route, status));
    metrics_observe(metrics_with2(r->h->m_duration, route, status),
                    httpd_now() - r->started);
}

/* --- accessors --- */

const char *http_req_method(const http_req *r) { return r->method; }
const char *http_req_path(const http_req *r) { return r->path; }
const char *http_req_id(const http_req *r) { return r->id; }
const char *http_req_authorization(const http_req *r) { return r->authorization; }
const char *http_req_content_type(const http_req *r) { return r->content_type; }
bool http_req_alive(const http_req *r) { return r->wsi != NULL; }
void http_req_set_data(http_req *r, void *data) { r->data = data; }
void *http_req_data(const http_req *r) { return r->data; }

const char *http_req_param(const http_req *r, const char *name)
{
    for (int i = 0; i < r->nparams; i++) {
        const char *n = r->params[i].name; /* "{name}" */
        size_t len = strlen(name);
        if (strncmp(n + 1, name, len) == 0 && n[len + 1] == '}' && n[len + 2] == '\0')
            return r->params[i].value;
    }
    return NULL;
}

const char *http_req_query(const http_req *r, const char *name)
{
    for (int i = 0; i < r->nquery; i++)
        if (strcmp(r->query[i].name, name) == 0)
            return r->query[i].value;
    return NULL;
}

const char *http_req_body(const http_req *r, size_t *len)
{
    if (len)
        *len = r->body.len;
    return r->body.data ? r->body.data : "";
}

const char *http_req_peer(const http_req *r)
{
    return r->peer;
}

int http_req_add_header(http_req *r, const char *name, const char *value)
{
    if (r->nheaders >= HTTPD_MAX_HEADERS || strlen(name) > 60)
        return CHORUS_ERR;
    r->headers[r->nheaders].name = strdup(name);
    r->headers[r->nheaders].value = strdup(value);
    r->nheaders++;
    return CHORUS_OK;
}

/* --- answering --- */

void http_respond(http_req *r, int status, const char *content_type, const char *body,
                  size_t len)
{
    if (r->answered) {
        log_error("http: request %s answered twice (bug)", r->id);
        return;
    }
    r->answered = true;
    r->status = status;
    r->ctype_out = strdup(content_type ? content_type : "application/json");
    if (len <= HTTPD_WHOLE_MAX && (r->whole = malloc(LWS_PRE + HTTPD_HEADER_ROOM + len))) {
        if (len)
            memcpy(r->whole + LWS_PRE + HTTPD_HEADER_ROOM, body, len);
        r->whole_len = len;
    } else if (buf_append(&r->resp, body, len) != CHORUS_OK) {
        r->status = 500;
    }
    if (!r->wsi) { /* the client is gone: nobody to answer */
        httpd_req_observe(r);
        httpd_req_free(r);
        return;
    }
    lws_callback_on_writable(r->wsi);
}

void http_respond_json(http_req *r, int status, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!s) {
        http_respond_error(r, 500, "internal", "could not encode the response");
        return;
    }
    http_respond(r, status, "application/json", s, strlen(s));
    free(s);
}

void http_respond_error(http_req *r, int status, const char *code, const char *message)
{
    http_respond_error_field(r, status, code, message, NULL);
}

void http_respond_error_field(http_req *r, int status, const char *code, const char *message,
                              const char *field)
{
    json_t *j = json_pack("{s:{s:s, s:s}}", "error", "code", code, "message", message);
    if (j && field && field[0])
        json_object_set_new(json_object_get(j, "error"), "field", json_string(field));
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!s) {
        static const char oom[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";
        http_respond(r, 500, "application/json", oom, sizeof oom - 1);
        return;
    }
    http_respond(r, status, "application/json", s, strlen(s));
    free(s);
}
