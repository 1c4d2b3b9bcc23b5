/* load_sample.c - the server side of a run, from the processes' own /metrics: each WSS
 * node's resident memory and sessions (the node's listener serves the admin routes), and
 * the gateway's memory and HTTP routes (requests, 5xx, latency histogram).
 *
 * The parent samples once a second between reading its workers' pipes, so every request
 * has a short timeout: a stuck server costs the loop a fraction of a second, not more.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "load.h"

#define ASK_TIMEOUT_MS 300

void gauge_set(gauge *g, double v)
{
    if (!g->seen) {
        g->first = g->peak = v;
        g->seen = true;
    }
    g->now = v;
    g->peak = v > g->peak ? v : g->peak;
}

/* A loopback TCP exchange: sends req, reads until the server closes; the answer,
 * malloc'ed and NUL-terminated, or NULL. */
char *sample_ask(int port, const char *req, size_t len)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {0, ASK_TIMEOUT_MS * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv); /* bounds connect() too */
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 || write(fd, req, len) != (ssize_t)len) {
        close(fd);
        return NULL;
    }
    size_t cap = 1 << 20, got = 0;
    char *out = malloc(cap);
    for (ssize_t r; out && got < cap - 1 && (r = read(fd, out + got, cap - 1 - got)) > 0;)
        got += (size_t)r;
    close(fd);
    if (out)
        out[got] = '\0';
    return out;
}

char *sample_get_metrics(int port)
{
    static const char req[] = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    return sample_ask(port, req, sizeof req - 1);
}

/* The number of a line "<name><sep><number>" of text (an unlabelled Prometheus series
 * with sep ' ', a field of Redis' INFO with ':'); -1 when absent. */
static double text_number(const char *text, const char *name, char sep)
{
    char key[96];
    snprintf(key, sizeof key, "\n%s%c", name, sep);
    const char *p = strstr(text, key);
    return p ? atof(p + strlen(key)) : -1;
}

bool sample_pair(char *text, char sep, const char *n1, gauge *g1, const char *n2, gauge *g2)
{
    double v1 = text ? text_number(text, n1, sep) : -1;
    double v2 = text ? text_number(text, n2, sep) : -1;
    free(text);
    if (v1 < 0 || v2 < 0)
        return false;
    gauge_set(g1, v1);
    gauge_set(g2, v2);
    return true;
}

bool sample_node(node_sample *n)
{
    char *text = sample_get_metrics(n->port);
    double ticks = -1, sum = -1, fast = -1;
    if (text) {
        ticks = text_number(text, "chorus_event_loop_lag_seconds_count", ' ');
        sum = text_number(text, "chorus_event_loop_lag_seconds_sum", ' ');
        fast = text_number(text, "chorus_event_loop_lag_seconds_bucket{le=\"0.1\"}", ' ');
    }
    if (ticks >= 0 && sum >= 0 && fast >= 0) {
        gauge_set(&n->lag_ticks, ticks);
        gauge_set(&n->lag_sum, sum);
        gauge_set(&n->lag_slow, ticks - fast);
    }
    return sample_pair(text, ' ', "process_resident_memory_bytes", &n->rss,
                       "chorus_wss_connections", &n->sessions);
}

double node_lag_ms(const node_sample *n)
{
    double ticks = n->lag_ticks.now - n->lag_ticks.first;
    return ticks > 0 ? (n->lag_sum.now - n->lag_sum.first) * 1000 / ticks : -1;
}

double node_lag_slow_share(const node_sample *n)
{
    double ticks = n->lag_ticks.now - n->lag_ticks.first;
    return ticks > 0 ? (n->lag_slow.now - n->lag_slow.first) / ticks : -1;
}

double node_kib_per_session(const node_sample *n)
{
    double d = n->sessions.peak - n->sessions.first;
    return d > 0 ? (n->rss.peak - n->rss.first) / 1024 / d : 0;
}

/* ---- the gateway ---------------------------------------------------------------------- */

/* The value of label name in a series line's {...} into out; false when absent. */
static bool label(const char *line, const char *name, char *out, size_t cap)
{
    char key[40];
    snprintf(key, sizeof key, "%s=\"", name);
    const char *p = strstr(line, key), *end = p ? strchr(p + strlen(key), '"') : NULL;
    if (!end || (size_t)(end - p - strlen(key)) >= cap)
        return false;
    p += strlen(key);
    memcpy(out, p, (size_t)(end - p));
    out[end - p] = '\0';
    return true;
}

static route_sample *route_of(gateway_sample *g, const char *name)
{
    for (int i = 0; i < g->nroutes; i++)
        if (strcmp(g->routes[i].route, name) == 0)
            return &g->routes[i];
    if (g->nroutes == ROUTE_MAX)
        return NULL;
    route_sample *r = &g->routes[g->nroutes++];
    memset(r, 0, sizeof *r);
    snprintf(r->route, sizeof r->route, "%s", name);
    return r;
}

/* Adds v to the bucket le of r (buckets keep the order the server writes them in). */
static void add_bucket(route_sample *r, double le, double v)
{
    int i = 0;
    while (i < r->nle && r->le[i] != le)
        i++;
    if (i == r->nle) {
        if (r->nle == ROUTE_BUCKETS)
            return;
        r->le[r->nle++] = le;
    }
    r->now.cum[i] += v;
}

/* One line of the text format, when it is one of the HTTP families. The gateway's own
 * /metrics route is left out: the harness' scrapes are not the load. */
static void route_line(gateway_sample *g, const char *line)
{
    static const char req[] = "chorus_http_requests_total{",
                      dur[] = "chorus_http_request_duration_seconds_";
    char name[96], status[8], le[32];
    bool is_req = strncmp(line, req, sizeof req - 1) == 0;
    if ((!is_req && strncmp(line, dur, sizeof dur - 1) != 0) ||
        !label(line, "route", name, sizeof name) || strcmp(name, "/metrics") == 0)
        return;
    const char *val = strrchr(line, '}'); /* routes hold braces: /channels/{ch} */
    route_sample *r = val ? route_of(g, name) : NULL;
    if (!r)
        return;
    double v = atof(val + 1);
    if (is_req) {
        r->now.requests += v;
        if (label(line, "status", status, sizeof status) && status[0] == '5')
            r->now.errors += v;
        return;
    }
    const char *kind = line + sizeof dur - 1;
    if (strncmp(kind, "sum{", 4) == 0)
        r->now.sum += v;
    else if (strncmp(kind, "bucket{", 7) == 0 && label(line, "le", le, sizeof le))
        add_bucket(r, strcmp(le, "+Inf") == 0 ? 1e300 : atof(le), v);
}

bool sample_gateway(gateway_sample *g)
{
    char *text = sample_get_metrics(g->port);
    double rss = text ? text_number(text, "process_resident_memory_bytes", ' ') : -1;
    if (rss < 0) {
        free(text);
        return false;
    }
    bool first = !g->rss.seen;
    gauge_set(&g->rss, rss);
    for (int i = 0; i < g->nroutes; i++)
        memset(&g->routes[i].now, 0, sizeof g->routes[i].now);
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        if (strncmp(line, "chorus_build_info{", 18) == 0)
            label(line, "roles", g->roles, sizeof g->roles);
        route_line(g, line);
    }
    for (int i = 0; first && i < g->nroutes; i++)
        g->routes[i].base = g->routes[i].now; /* a route first seen later started at 0 */
    free(text);
    return true;
}

route_counts route_delta(const route_sample *r)
{
    route_counts d = {r->now.requests - r->base.requests, r->now.errors - r->base.errors,
                      r->now.sum - r->base.sum, {0}};
    for (int i = 0; i < r->nle; i++)
        d.cum[i] = r->now.cum[i] - r->base.cum[i];
    return d;
}

double route_quantile_ms(const route_sample *r, double q)
{
    route_counts d = route_delta(r);
    double total = r->nle ? d.cum[r->nle - 1] : 0, rank = q * total;
    if (total <= 0)
        return -1;
    for (int i = 0; i < r->nle; i++) {
        if (d.cum[i] < rank)
            continue;
        if (r->le[i] >= 1e300) /* past the last bound: its value is all one can say */
            return i ? r->le[i - 1] * 1e3 : -1;
        double lo = i ? r->le[i - 1] : 0, below = i ? d.cum[i - 1] : 0;
        double in = d.cum[i] - below;
        return (lo + (r->le[i] - lo) * (in > 0 ? (rank - below) / in : 1)) * 1e3;
    }
    return -1;
}
