/* rclient.c - one Redis connection on libev: reconnects, a pending bound, a watchdog.
 *
 * Lifetimes. hiredis owns its redisAsyncContext and frees it by itself after a lost
 * connection (after calling the pending callbacks with NULL, then the disconnect
 * callback); c->ac is dropped at that point and never touched again. The rclient itself
 * outlives every context it made: it is freed only when no context is left and none of
 * its callbacks is on the stack (c->depth == 0), otherwise rclient_free defers the work
 * to a zero-delay timer (the "reaper"), run from the loop with no hiredis frame above it.
 *
 * Exactly-once callbacks. Replies arrive in command order on one connection, and hiredis
 * calls every outstanding callback exactly once (with NULL when the context goes away),
 * so the user's (cb, arg) pairs live in a FIFO ring of max_pending slots and hiredis is
 * given one trampoline (rc_reply_cb) that pops the head. No allocation per command
 * beyond what hiredis does itself; the pending count is the ring's length. Commands that
 * would break the one-reply-per-command rule (SUBSCRIBE family, MONITOR) are refused.
 *
 * Watchdog. hiredis 0.14 has no timeouts. One ev_timer is armed while anything is in
 * flight (TCP connect, SELECT, commands); every reply moves c->last_progress. When
 * nothing has moved for command_timeout_ms the context is freed (callbacks get NULL) and
 * a reconnect is scheduled, unless the socket holds unread bytes: then the loop, not
 * Redis, was late, and that counts as progress. The timer is lazy: it is not stopped
 * when the ring empties, it stops itself when it fires with nothing in flight.
 *
 * Defaults for zero options: max_pending 10000, backoff 100 ms .. 5 s, command timeout
 * 5 s (also used as the connect timeout). Backoff is exponential with "equal jitter":
 * the delay is uniform in [d/2, d] where d = min(max, min * 2^attempt).
 *
 * The process should ignore SIGPIPE: hiredis 0.14 writes with write(2).
 */
#include "chorus/rclient.h"

#include <arpa/inet.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/adapters/libev.h>
#include <hiredis/async.h>

#include "chorus/log.h"
#include "chorus/metrics.h"
#include "chorus/status.h"

#define RC_DEFAULT_MAX_PENDING 10000
#define RC_DEFAULT_BACKOFF_MIN_MS 100
#define RC_DEFAULT_BACKOFF_MAX_MS 5000
#define RC_DEFAULT_TIMEOUT_MS 5000

typedef enum rc_state {
    RC_DOWN,       /* no context; the retry timer runs (unless freeing) */
    RC_CONNECTING, /* context made, TCP connect in progress */
    RC_SELECTING,  /* connected, SELECT db in flight */
    RC_READY,      /* accepting commands */
    RC_CLOSING,    /* hiredis is tearing the context down: refuse commands */
} rc_state;

typedef struct rc_slot {
    rclient_cb cb;
    void *arg;
} rc_slot;

struct rclient {
    struct ev_loop *loop;
    char *name;
    char host[INET_ADDRSTRLEN];
    int port;
    int db;
    int max_pending;
    int backoff_min_ms;
    int backoff_max_ms;
    int timeout_ms;

    redisAsyncContext *ac; /* NULL while down */
    rc_state st;
    bool up;       /* state_cb(true) was the last report */
    bool ever_up;  /* for chorus_redis_reconnects_total */
    bool freeing;  /* rclient_free was called */
    int depth;     /* our callbacks currently on the stack */
    int attempt;   /* failed attempts since the last good connection */
    uint64_t rng;

    rc_slot *ring;
    int head;
    int count;
    ev_tstamp last_progress;

    ev_timer retry;
    ev_timer watchdog;
    ev_timer reaper;

    rclient_state_cb state_cb;
    void *state_arg;

    metrics_series *m_connected;
    metrics_series *m_reconnects;
    metrics_series *m_pending;
    metrics_series *m_err_connect;
    metrics_series *m_err_reply;
    metrics_series *m_err_refused;
};

static void rc_connect(rclient *c);

/* ---- small helpers ----------------------------------------------------------------- */

static void m_inc(metrics_series *s)
{
    if (s)
        metrics_inc(s);
}

static void m_set(metrics_series *s, double v)
{
    if (s)
        metrics_set(s, v);
}

static uint64_t rc_rand(rclient *c)
{
    /* xorshift64*: jitter only needs to spread clients apart, not be unpredictable */
    uint64_t x = c->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    c->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Parses 1+ decimal digits, at most max. Advances *p. */
static bool parse_num(const char **p, long max, long *out)
{
    const char *s = *p;
    long v = 0;
    if (*s < '0' || *s > '9')
        return false;
    while (*s >= '0' && *s <= '9') {
        v = v * 10 + (*s - '0');
        if (v > max)
            return false;
        s++;
    }
    *p = s;
    *out = v;
    return true;
}

/* Only IPv4 literals: hiredis 0.14 resolves with a blocking getaddrinfo (AF_INET first),
 * which returns at once for a dotted quad and may query DNS for anything else. */
int rclient_parse_url(const char *url, char *host, size_t hostlen, int *port, int *db)
{
    static const char scheme[] = "redis://";
    if (!url || !host || hostlen == 0 || !port || !db)
        return CHORUS_ERR;
    if (strncmp(url, scheme, sizeof(scheme) - 1) != 0)
        return CHORUS_ERR;
    const char *p = url + sizeof(scheme) - 1;
    size_t hl = strcspn(p, ":/");
    char h[INET_ADDRSTRLEN];
    struct in_addr addr;
    if (hl == 0 || hl >= sizeof(h) || hl >= hostlen)
        return CHORUS_ERR;
    memcpy(h, p, hl);
    h[hl] = '\0';
    if (inet_pton(AF_INET, h, &addr) != 1)
        return CHORUS_ERR;
    p += hl;
    long v = 6379;
    if (*p == ':') {
        p++;
        if (!parse_num(&p, 65535, &v) || v == 0)
            return CHORUS_ERR;
    }
    long d = 0;
    if (*p == '/') {
        p++;
        if (*p != '\0' && !parse_num(&p, INT_MAX, &d))
            return CHORUS_ERR;
    }
    if (*p != '\0')
        return CHORUS_ERR;
    memcpy(host, h, hl + 1);
    *port = (int)v;
    *db = (int)d;
    return CHORUS_OK;
}

/* The command name of a formatted RESP command ("*N\r\n$L\r\nNAME\r\n..."), or false
 * when it has none (hiredis would assert on such a command). */
static bool cmd_name(const char *cmd, size_t len, const char **name, size_t *nlen)
{
    const char *end = cmd + len;
    const char *p = memchr(cmd, '\n', len);
    if (len < 4 || cmd[0] != '*' || cmd[1] == '0' || !p || ++p >= end || *p != '$')
        return false;
    long l = 0;
    p++;
    if (!parse_num(&p, INT_MAX, &l) || end - p < 2 || p[0] != '\r' || p[1] != '\n')
        return false;
    p += 2;
    if (end - p < l + 2)
        return false;
    *name = p;
    *nlen = (size_t)l;
    return true;
}

/* Commands after which one command no longer gets exactly one reply: hiredis would
 * route their replies to other callbacks, call them more than once, or assert. */
static bool cmd_supported(const char *name, size_t n)
{
    static const char *const refused[] = {
        "subscribe", "psubscribe", "ssubscribe", "unsubscribe",
        "punsubscribe", "sunsubscribe", "monitor",
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        if (strlen(refused[i]) == n && strncasecmp(refused[i], name, n) == 0)
            return false;
    return true;
}

/* ---- connection state -------------------------------------------------------------- */

static void rc_watchdog_arm(rclient *c)
{
    if (!ev_is_active(&c->watchdog) && !c->freeing) {
        ev_timer_set(&c->watchdog, c->timeout_ms / 1000.0, 0.);
        ev_timer_start(c->loop, &c->watchdog);
    }
}

static void rc_schedule_retry(rclient *c)
{
    int shift = c->attempt < 20 ? c->attempt : 20;
    int64_t d = (int64_t)c->backoff_min_ms << shift;
    if (d > c->backoff_max_ms)
        d = c->backoff_max_ms;
    c->attempt++;
    int64_t ms = d / 2 + (int64_t)(rc_rand(c) % (uint64_t)(d / 2 + 1));
    ev_timer_stop(c->loop, &c->retry);
    ev_timer_set(&c->retry, (double)ms / 1000.0, 0.);
    ev_timer_start(c->loop, &c->retry);
}

/* Calls whatever is still in the ring with NULL. hiredis has normally done this through
 * rc_reply_cb before the context went away; this is the safety net that keeps the
 * exactly-once promise if it did not. */
static void rc_flush_ring(rclient *c)
{
    while (c->count > 0) {
        rc_slot s = c->ring[c->head];
        c->head = (c->head + 1) % c->max_pending;
        c->count--;
        if (s.cb)
            s.cb(s.arg, NULL);
    }
    m_set(c->m_pending, 0);
}

/* The context is gone (or never came). Idempotent per context. Callers hold depth. */
static void rc_went_down(rclient *c, bool connect_failed)
{
    bool was_up = c->up;
    c->ac = NULL;
    c->st = RC_DOWN;
    c->up = false;
    m_set(c->m_connected, 0);
    if (connect_failed)
        m_inc(c->m_err_connect);
    rc_flush_ring(c);
    if (!c->freeing)
        rc_schedule_retry(c);
    if (was_up && c->state_cb)
        c->state_cb(c->state_arg, false);
}

static void rc_ready(rclient *c)
{
    c->st = RC_READY;
    c->attempt = 0;
    c->up = true;
    if (c->ever_up)
        m_inc(c->m_reconnects);
    c->ever_up = true;
    m_set(c->m_connected, 1);
    log_info("redis %s: connected to %s:%d db %d", c->name, c->host, c->port, c->db);
    if (c->state_cb)
        c->state_cb(c->state_arg, true);
}

/* Frees the context from the loop (no hiredis frame of it on the stack): hiredis calls
 * the pending callbacks with NULL and, if the connection was established, the
 * disconnect callback, all before this returns. */
static void rc_drop(rclient *c)
{
    redisAsyncContext *ac = c->ac;
    if (!ac)
        return;
    c->st = RC_CLOSING;
    redisAsyncFree(ac);
    if (c->ac) /* it was still connecting: hiredis calls no disconnect callback */
        rc_went_down(c, false);
}

static void rc_destroy(rclient *c)
{
    c->depth++;
    rc_drop(c);
    rc_flush_ring(c);
    c->depth--;
    ev_timer_stop(c->loop, &c->retry);
    ev_timer_stop(c->loop, &c->watchdog);
    ev_timer_stop(c->loop, &c->reaper);
    m_set(c->m_connected, 0);
    m_set(c->m_pending, 0);
    free(c->ring);
    free(c->name);
    free(c);
}

/* ---- hiredis callbacks -------------------------------------------------------------- */

static void rc_reply_cb(redisAsyncContext *ac, void *r, void *priv)
{
    rclient *c = priv;
    redisReply *reply = r;
    (void)ac;
    if (c->count == 0) {
        log_error("redis %s: reply without a pending command", c->name);
        return;
    }
    rc_slot s = c->ring[c->head];
    c->head = (c->head + 1) % c->max_pending;
    c->count--;
    m_set(c->m_pending, c->count);
    if (!reply) {
        /* the context is going away: refuse commands from the callbacks that follow */
        if (c->st == RC_READY)
            c->st = RC_CLOSING;
    } else {
        c->last_progress = ev_now(c->loop);
        if (reply->type == REDIS_REPLY_ERROR) {
            /* the caller gets the error; expected ones (BUSYGROUP...) are not warnings */
            m_inc(c->m_err_reply);
            log_debug("redis %s: error reply: %.*s", c->name, (int)reply->len, reply->str);
        }
    }
    if (c->freeing)
        reply = NULL; /* rclient_free promised NULL to whatever was pending */
    if (s.cb) {
        c->depth++;
        s.cb(s.arg, reply);
        c->depth--;
    }
}

static void rc_select_cb(redisAsyncContext *ac, void *r, void *priv)
{
    rclient *c = priv;
    redisReply *reply = r;
    if (!reply || c->freeing)
        return; /* NULL: the disconnect callback follows */
    c->depth++;
    if (reply->type == REDIS_REPLY_ERROR) {
        log_warn("redis %s: SELECT %d failed: %.*s", c->name, c->db, (int)reply->len,
                 reply->str);
        m_inc(c->m_err_connect);
        c->st = RC_CLOSING;
        /* inside a reply callback hiredis defers the free until we return, then calls
         * rc_on_disconnect, which schedules the retry */
        redisAsyncFree(ac);
    } else {
        c->last_progress = ev_now(c->loop);
        rc_ready(c);
    }
    c->depth--;
}

static void rc_on_connect(const redisAsyncContext *ac, int status)
{
    rclient *c = ac->data;
    c->depth++;
    if (status != REDIS_OK) {
        /* hiredis frees the context when we return */
        log_warn("redis %s: connect to %s:%d failed: %s", c->name, c->host, c->port,
                 ac->c.errstr[0] ? ac->c.errstr : "unknown error");
        rc_went_down(c, true);
    } else if (!c->freeing) {
        c->last_progress = ev_now(c->loop);
        redisEnableKeepAlive((redisContext *)&ac->c);
        if (c->db == 0) {
            rc_ready(c);
        } else {
            c->st = RC_SELECTING;
            if (redisAsyncCommand(c->ac, rc_select_cb, c, "SELECT %d", c->db) != REDIS_OK) {
                /* cannot free the context inside its connect callback: let the
                 * watchdog recycle it */
                log_warn("redis %s: cannot send SELECT", c->name);
            }
        }
    }
    c->depth--;
}

static void rc_on_disconnect(const redisAsyncContext *ac, int status)
{
    rclient *c = ac->data;
    c->depth++;
    if (status != REDIS_OK && !c->freeing)
        log_warn("redis %s: connection to %s:%d lost: %s", c->name, c->host, c->port,
                 ac->c.errstr[0] ? ac->c.errstr : "unknown error");
    rc_went_down(c, false);
    c->depth--;
}

/* ---- timers ------------------------------------------------------------------------- */

static void rc_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    rclient *c = w->data;
    (void)loop;
    (void)revents;
    c->depth++;
    rc_connect(c);
    c->depth--;
}

/* Whether the socket has something for the loop to do now: bytes to read, or (while
 * connecting) the connect's outcome. */
static bool rc_socket_ready(const rclient *c)
{
    if (!c->ac || c->ac->c.fd < 0)
        return false;
    struct pollfd p = {.fd = c->ac->c.fd, .events = POLLIN};
    if (c->st == RC_CONNECTING)
        p.events = POLLOUT;
    return poll(&p, 1, 0) == 1 && (p.revents & (POLLIN | POLLOUT));
}

static void rc_watchdog_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    rclient *c = w->data;
    (void)revents;
    bool busy = c->st == RC_CONNECTING || c->st == RC_SELECTING ||
                (c->st == RC_READY && c->count > 0);
    if (!busy || c->freeing)
        return; /* idle: stay stopped until something is sent */
    ev_tstamp left = c->last_progress + c->timeout_ms / 1000.0 - ev_now(loop);
    if (left <= 0.0005 && rc_socket_ready(c)) {
        /* The answer is here and the loop is late: a callback ran for seconds (on a
         * starved host), and libev runs expired timers before the I/O of the same
         * iteration. Bytes waiting are progress; dropping would throw them away and
         * make the reconnect storm that starved the loop worse. */
        c->last_progress = ev_now(loop);
        left = c->timeout_ms / 1000.0;
    }
    if (left > 0.0005) {
        ev_timer_set(w, left, 0.);
        ev_timer_start(loop, w);
        return;
    }
    c->depth++;
    if (c->st != RC_READY) {
        log_warn("redis %s: %s %s:%d after %d ms", c->name,
                 c->st == RC_CONNECTING ? "no connection to" : "no answer to SELECT from",
                 c->host, c->port, c->timeout_ms);
        m_inc(c->m_err_connect);
    } else {
        log_warn("redis %s: no reply for %d ms (%d pending): dropping the connection",
                 c->name, c->timeout_ms, c->count);
    }
    rc_drop(c);
    c->depth--;
}

static void rc_reaper_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    rc_destroy(w->data);
}

/* ---- connecting ----------------------------------------------------------------------- */

static void rc_connect(rclient *c)
{
    redisAsyncContext *ac = redisAsyncConnect(c->host, c->port);
    if (!ac || ac->err) {
        log_warn("redis %s: connect to %s:%d failed: %s", c->name, c->host, c->port,
                 ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        rc_went_down(c, true);
        return;
    }
    ac->data = c;
    if (redisLibevAttach(c->loop, ac) != REDIS_OK) {
        redisAsyncFree(ac);
        rc_went_down(c, true);
        return;
    }
    c->ac = ac;
    c->st = RC_CONNECTING;
    redisAsyncSetDisconnectCallback(ac, rc_on_disconnect);
    redisAsyncSetConnectCallback(ac, rc_on_connect); /* also starts the write watcher */
    c->last_progress = ev_now(c->loop);
    rc_watchdog_arm(c);
}

/* ---- public API ------------------------------------------------------------------------- */

static metrics_series *rc_series(metrics_type type, const char *name, const char *help,
                                 const char *labels, const char *v1, const char *v2)
{
    metrics_family *f = metrics_family_new(type, name, help, labels, NULL, 0);
    if (!f)
        return NULL;
    return v2 ? metrics_with2(f, v1, v2) : metrics_with1(f, v1);
}

rclient *rclient_new(struct ev_loop *loop, const rclient_opts *opts)
{
    if (!loop || !opts || !opts->url)
        return NULL;
    const char *name = opts->name && opts->name[0] ? opts->name : "redis";
    char host[INET_ADDRSTRLEN];
    int port, db;
    if (rclient_parse_url(opts->url, host, sizeof(host), &port, &db) != CHORUS_OK) {
        log_warn("redis %s: bad URL (want redis://IPv4:port[/db])", name);
        return NULL;
    }
    if (opts->max_pending < 0 || opts->backoff_min_ms < 0 || opts->backoff_max_ms < 0 ||
        opts->command_timeout_ms < 0) {
        log_warn("redis %s: negative option", name);
        return NULL;
    }
    rclient *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->loop = loop;
    memcpy(c->host, host, sizeof(host));
    c->port = port;
    c->db = db;
    c->max_pending = opts->max_pending ? opts->max_pending : RC_DEFAULT_MAX_PENDING;
    c->backoff_min_ms = opts->backoff_min_ms ? opts->backoff_min_ms : RC_DEFAULT_BACKOFF_MIN_MS;
    c->backoff_max_ms = opts->backoff_max_ms ? opts->backoff_max_ms : RC_DEFAULT_BACKOFF_MAX_MS;
    if (c->backoff_max_ms < c->backoff_min_ms)
        c->backoff_max_ms = c->backoff_min_ms;
    c->timeout_ms = opts->command_timeout_ms ? opts->command_timeout_ms : RC_DEFAULT_TIMEOUT_MS;
    c->name = strdup(name);
    c->ring = calloc((size_t)c->max_pending, sizeof(*c->ring));
    if (!c->name || !c->ring) {
        free(c->name);
        free(c->ring);
        free(c);
        return NULL;
    }
    c->rng = ((uint64_t)time(NULL) << 20) ^ (uint64_t)(uintptr_t)c ^ (uint64_t)getpid();
    if (c->rng == 0)
        c->rng = 0x9E3779B97F4A7C15ULL;
    ev_timer_init(&c->retry, rc_retry_cb, 0., 0.);
    ev_timer_init(&c->watchdog, rc_watchdog_cb, 0., 0.);
    ev_timer_init(&c->reaper, rc_reaper_cb, 0., 0.);
    c->retry.data = c->watchdog.data = c->reaper.data = c;

    c->m_connected = rc_series(METRICS_GAUGE, "chorus_redis_connected",
                               "1 while the Redis connection is up", "client", c->name, NULL);
    c->m_reconnects =
        rc_series(METRICS_COUNTER, "chorus_redis_reconnects_total",
                  "Redis connections re-established after a loss", "client", c->name, NULL);
    c->m_pending = rc_series(METRICS_GAUGE, "chorus_redis_pending",
                             "Redis commands awaiting a reply", "client", c->name, NULL);
    static const char err_help[] = "Redis errors: failed connects, error replies, refused "
                                   "commands";
    c->m_err_connect = rc_series(METRICS_COUNTER, "chorus_redis_errors_total", err_help,
                                 "client,kind", c->name, "connect");
    c->m_err_reply = rc_series(METRICS_COUNTER, "chorus_redis_errors_total", err_help,
                               "client,kind", c->name, "reply");
    c->m_err_refused = rc_series(METRICS_COUNTER, "chorus_redis_errors_total", err_help,
                                 "client,kind", c->name, "refused");
    m_set(c->m_connected, 0);
    m_set(c->m_pending, 0);

    /* the loop may not have run for a while: the connect deadline starts now */
    ev_now_update(loop);
    rc_connect(c);
    return c;
}

void rclient_on_state(rclient *c, rclient_state_cb cb, void *arg)
{
    if (!c)
        return;
    c->state_cb = cb;
    c->state_arg = arg;
}

/* Queues an already formatted command. */
static int rc_send(rclient *c, rclient_cb cb, void *arg, const char *cmd, size_t len)
{
    const char *name;
    size_t nlen;
    if (!cmd_name(cmd, len, &name, &nlen))
        return CHORUS_ERR;
    if (!cmd_supported(name, nlen)) {
        log_warn("redis %s: %.*s is not supported (one reply per command only)", c->name,
                 (int)nlen, name);
        return CHORUS_ERR;
    }
    if (redisAsyncFormattedCommand(c->ac, rc_reply_cb, c, cmd, len) != REDIS_OK) {
        m_inc(c->m_err_refused);
        return CHORUS_AGAIN; /* hiredis is disconnecting */
    }
    int tail = (c->head + c->count) % c->max_pending;
    c->ring[tail].cb = cb;
    c->ring[tail].arg = arg;
    if (c->count++ == 0) {
        /* idle time before this command is not silence */
        c->last_progress = ev_now(c->loop);
        rc_watchdog_arm(c);
    }
    m_set(c->m_pending, c->count);
    return CHORUS_OK;
}

static int rc_admit(rclient *c)
{
    if (c->freeing || c->st != RC_READY || !c->ac || c->count >= c->max_pending) {
        m_inc(c->m_err_refused);
        return CHORUS_AGAIN;
    }
    return CHORUS_OK;
}

int rclient_command(rclient *c, rclient_cb cb, void *arg, const char *fmt, ...)
{
    if (!c || !fmt)
        return CHORUS_ERR;
    int rc = rc_admit(c);
    if (rc != CHORUS_OK)
        return rc;
    char *cmd = NULL;
    va_list ap;
    va_start(ap, fmt);
    int len = redisvFormatCommand(&cmd, fmt, ap);
    va_end(ap);
    if (len < 0)
        return CHORUS_ERR;
    rc = rc_send(c, cb, arg, cmd, (size_t)len);
    redisFreeCommand(cmd);
    return rc;
}

int rclient_command_argv(rclient *c, rclient_cb cb, void *arg, int argc, const char **argv,
                         const size_t *argvlen)
{
    if (!c || argc < 1 || !argv)
        return CHORUS_ERR;
    for (int i = 0; i < argc; i++)
        if (!argv[i])
            return CHORUS_ERR;
    int rc = rc_admit(c);
    if (rc != CHORUS_OK)
        return rc;
    char *cmd = NULL;
    int len = redisFormatCommandArgv(&cmd, argc, argv, argvlen);
    if (len < 0)
        return CHORUS_ERR;
    rc = rc_send(c, cb, arg, cmd, (size_t)len);
    redisFreeCommand(cmd);
    return rc;
}

bool rclient_connected(const rclient *c)
{
    return c && !c->freeing && c->st == RC_READY;
}

int rclient_pending(const rclient *c)
{
    return c ? c->count : 0;
}

/* Commands are written when the socket next polls writable, and freeing the context
 * drops what is still unwritten. A stopping process's last commands (a WSS node's
 * removal from the registry) would die in the buffer when the stop comes first in the
 * same loop iteration, so they go out now: as much as the socket takes, never waiting. */
static void rc_write_out(rclient *c)
{
    if (c->st != RC_READY || !c->ac)
        return;
    int done = 0;
    for (int tries = 0; !done && tries < 4; tries++)
        if (redisBufferWrite(&c->ac->c, &done) != REDIS_OK)
            return;
}

void rclient_free(rclient *c)
{
    if (!c || c->freeing)
        return;
    rc_write_out(c);
    c->freeing = true;
    c->state_cb = NULL;
    ev_timer_stop(c->loop, &c->retry);
    ev_timer_stop(c->loop, &c->watchdog);
    if (c->depth > 0) {
        /* a hiredis frame of our context may be on the stack: finish from the loop */
        ev_timer_set(&c->reaper, 0., 0.);
        ev_timer_start(c->loop, &c->reaper);
        return;
    }
    rc_destroy(c);
}
