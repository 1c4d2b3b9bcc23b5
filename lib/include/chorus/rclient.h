/* rclient.h - an asynchronous Redis client on libev (hiredis async + libev adapter).
 *
 * One rclient is one connection. It reconnects by itself with exponential backoff and
 * jitter after any loss; commands issued while it is down are refused (CHORUS_AGAIN)
 * rather than queued without bound. Commands issued in the same loop iteration leave in
 * one write (hiredis buffers them), which is the pipelining the outbox worker relies on.
 * At most opts.max_pending commands may wait for replies at once.
 *
 * A blocking command (XREAD/XREADGROUP ... BLOCK) holds its connection: use a separate
 * rclient for it, and set its opts.command_timeout_ms above the BLOCK time, so that a
 * silent server is still detected (hiredis 0.14 has no command timeouts of its own).
 *
 * Callbacks: if a call returns CHORUS_OK its callback runs exactly once: with the reply,
 * or with reply NULL when the connection was lost before the reply came. The reply is
 * owned by hiredis and valid only during the callback.
 *
 * Metrics (label client=<opts.name>): chorus_redis_connected (gauge 0/1),
 * chorus_redis_reconnects_total, chorus_redis_pending (gauge),
 * chorus_redis_errors_total{kind=connect|reply|refused}.
 */
#ifndef CHORUS_RCLIENT_H
#define CHORUS_RCLIENT_H

#include <stdbool.h>
#include <stddef.h>

#include <ev.h>
#include <hiredis/hiredis.h>

typedef struct rclient rclient;

typedef struct rclient_opts {
    const char *url;        /* redis://IP:port[/db]; copied */
    const char *name;       /* metrics label and log prefix; copied */
    int max_pending;        /* commands awaiting replies before CHORUS_AGAIN */
    int backoff_min_ms;
    int backoff_max_ms;
    int command_timeout_ms; /* no reply for this long while commands are pending:
                               the connection is dropped and re-made (0 = 5000) */
} rclient_opts;

typedef void (*rclient_cb)(void *arg, redisReply *reply);
typedef void (*rclient_state_cb)(void *arg, bool connected);

/* Parses a redis:// URL. Returns CHORUS_OK or CHORUS_ERR (not an IP, bad port...). */
int rclient_parse_url(const char *url, char *host, size_t hostlen, int *port, int *db);

/* Creates the client and starts connecting. NULL on bad options. */
rclient *rclient_new(struct ev_loop *loop, const rclient_opts *opts);

/* Called on every connect (after SELECT db succeeded) and disconnect, to re-issue
 * blocking reads or mark readiness. Replaces any earlier callback. */
void rclient_on_state(rclient *c, rclient_state_cb cb, void *arg);

/* Sends a command built from a printf-like format (hiredis' redisvFormatCommand).
 * Returns CHORUS_OK, CHORUS_AGAIN (down or max_pending reached) or CHORUS_ERR. */
int rclient_command(rclient *c, rclient_cb cb, void *arg, const char *fmt, ...);

/* Sends a command from an argument vector (binary-safe). Same returns. */
int rclient_command_argv(rclient *c, rclient_cb cb, void *arg, int argc, const char **argv,
                         const size_t *argvlen);

bool rclient_connected(const rclient *c);
int rclient_pending(const rclient *c);

/* Writes out the commands still buffered (as far as the socket takes them without
 * waiting; their replies are not read), disconnects (pending callbacks get NULL) and
 * frees. Safe from inside a callback:
 * the free is deferred until hiredis has returned. */
void rclient_free(rclient *c);

#endif
