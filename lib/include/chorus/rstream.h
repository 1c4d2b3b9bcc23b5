/* rstream.h - reading a changing set of Redis streams (XREAD BLOCK) on libev.
 *
 * What the consumers of the outbox streams share (WSS nodes, the gateway's caches): one
 * rstream is one dedicated connection (an rclient of its own, since a blocking XREAD
 * holds its connection) that reads every subscribed stream from where it left off and
 * hands each entry, decoded (event.h), to one callback, in stream order per stream.
 *
 * Subscriptions change at any time. A change takes effect at the next XREAD; an XREAD
 * in flight is cut short with CLIENT UNBLOCK sent on the control client (a second
 * connection the caller owns, e.g. the app's shared one), so a new subscription is read
 * within a round trip rather than after opts.block_ms.
 *
 * Positions. Each subscription keeps the id of the last entry delivered; after a lost
 * connection reading resumes from there, so nothing still in the stream is missed and
 * nothing is delivered twice by this reader. Subscribing "from now" ("$") is resolved
 * to the stream's last id with XREVRANGE on the control client first, so entries added
 * between two XREADs are not skipped. Entries trimmed away (MAXLEN) before they were
 * read are the consumer's to detect (a channel event's seq jumps) and to fill from
 * Postgres.
 *
 * The doorbell. With many streams most of an XREAD's cost is naming them all. A
 * publisher that adds entries to streams adds after them one entry to the bell stream
 * RSTREAM_BELL (XADD MAXLEN ~ RSTREAM_BELL_MAXLEN), field "k": the stream keys it wrote,
 * separated by spaces. A reader given opts.bell blocks on the bell alone and reads only
 * the streams the bell names; every opts.sweep_ms (and after every connect) one read
 * names them all, so a bell that never came costs latency, not entries.
 *
 * Bounds: at most opts.max_streams subscriptions (CHORUS_AGAIN past it); each XREAD asks
 * for at most opts.count entries per stream. Entries that do not decode are skipped and
 * counted (chorus_rstream_bad_entries_total{reader}); also chorus_rstream_entries_total
 * and chorus_rstream_streams (gauge).
 */
#ifndef CHORUS_RSTREAM_H
#define CHORUS_RSTREAM_H

#include <stdbool.h>
#include <stddef.h>

#include <ev.h>

#include "chorus/event.h"
#include "chorus/rclient.h"

#define RSTREAM_KEY_MAX 64
#define RSTREAM_ID_MAX 48
#define RSTREAM_BELL "chorus:bell"
#define RSTREAM_BELL_MAXLEN "10000"

typedef struct rstream rstream;

typedef struct rstream_opts {
    const char *url;     /* redis:// URL of the streams; copied */
    const char *name;    /* metrics label and log prefix; copied */
    rclient *control;    /* for CLIENT UNBLOCK and XREVRANGE; not owned, must outlive */
    int block_ms;        /* XREAD BLOCK (0 = 1000) */
    int count;           /* XREAD COUNT per stream (0 = 500) */
    int max_streams;     /* subscriptions at most (0 = 1024) */
    int gap_ms;          /* wait after a read that brought entries (0 = none): see rstream.c */
    const char *bell;    /* the doorbell stream's key (copied), or NULL: no bell */
    int sweep_ms;        /* with a bell: a read of every stream at least this often (0 = 1000) */
} rstream_opts;

/* One entry of stream key, with its stream id. ev is valid only during the call. The
 * callback may subscribe and unsubscribe, and may call rstream_free (deferred). */
typedef void (*rstream_entry_cb)(void *arg, const char *key, const char *id,
                                 const chorus_event *ev);

/* Creates the reader and starts connecting. NULL on bad options. */
rstream *rstream_new(struct ev_loop *loop, const rstream_opts *opts, rstream_entry_cb cb,
                     void *arg);

/* Reads key from after from_id: "0-0" (everything the stream holds), "$" (only entries
 * added from now on), or an entry id (resume after it). Subscribing a key already
 * subscribed changes nothing and returns CHORUS_OK. Returns CHORUS_AGAIN when
 * max_streams are subscribed, CHORUS_ERR for a bad key or id. */
int rstream_subscribe(rstream *rs, const char *key, const char *from_id);

/* Stops reading key; entries of it that arrive later are dropped. */
void rstream_unsubscribe(rstream *rs, const char *key);

/* Whether the reader's connection is up, and how many times it was made: a consumer
 * that keeps state derived from the streams (the gateway's history freshness) drops it
 * when the count moves, since entries trimmed while it was away are lost to it. */
bool rstream_connected(const rstream *rs);
unsigned rstream_connections(const rstream *rs);

/* Subscriptions now. */
size_t rstream_count(const rstream *rs);

/* Whether key is in the set (its "$" may still be resolving). A subscription whose "$"
 * could not be resolved (the control client went down) leaves the set by itself. */
bool rstream_subscribed(const rstream *rs, const char *key);

/* The id of the last entry delivered from key (or its start id), "" if not subscribed. */
const char *rstream_position(const rstream *rs, const char *key);

/* Subscriptions whose "$" is still being resolved: an entry added before the resolution
 * reaches Redis is behind the position it will get, so it is never delivered. */
size_t rstream_unresolved(const rstream *rs);

/* Rings the doorbell on c: one entry of RSTREAM_BELL naming keys (len bytes, stream keys
 * separated by spaces). A publisher sends it after its entries on the same connection,
 * so that a reader it wakes finds them. Best effort: without it readers get the entries
 * at their next sweep. Same returns as rclient_command_argv; cb may be NULL. */
int rstream_ring(rclient *c, const char *keys, size_t len, rclient_cb cb, void *arg);

/* Frees the reader (safe from its own callback: the free then happens after it). */
void rstream_free(rstream *rs);

#endif
