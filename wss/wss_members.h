/* wss_members.h - a user's channels for a new session: the Redis membership cache
 * (chorus/memv.h) in front of the node's Postgres query.
 *
 * Cache misses wait for the end of the loop iteration and go to Postgres together, up
 * to 128 users a query, so a connect storm costs a query per batch, not per session.
 *
 * Metrics: chorus_wss_membership_loads_total{source=cache|postgres} (channel lists
 * answered), chorus_wss_membership_queries_total (channel queries: one a batch),
 * chorus_wss_membership_errors_total{kind=redis|postgres} (a failed or refused cache
 * read or fill, a value that does not parse; a failed query).
 */
#ifndef CHORUS_WSS_MEMBERS_H
#define CHORUS_WSS_MEMBERS_H

#include <stddef.h>
#include <stdint.h>

typedef struct wss_node wss_node;

/* At most this many channels per user (the query's LIMIT). */
#define WSS_MEMBERS_MAX 10000

/* chans/n: the user's channel ids, valid during the call only; err is NULL then. On
 * failure chans is NULL and err says why. */
typedef void (*wss_members_cb)(void *arg, const int64_t *chans, int n, const char *err);

/* Registers the channel query on the node's pool and the metrics. CHORUS_OK or
 * CHORUS_ERR. Call once, from the role's start. */
int wss_members_init(wss_node *node);

/* Loads the channels of user: from the cache when it holds a list under the user's
 * current membership version, else from Postgres (which then fills the cache unless
 * the version moved meanwhile). Redis down or failing is a Postgres load, never an
 * error. Returns CHORUS_OK when cb will run exactly once, later, from the loop (with an
 * error when the query is refused or fails); else (out of memory) cb never runs. */
int wss_members_load(wss_node *node, int64_t user, wss_members_cb cb, void *arg);

/* Answers the loads still waiting for their batch with an error (the node stops). */
void wss_members_stop(wss_node *node);
/* wss_members_stop, then frees what wss_members_init made. */
void wss_members_free(wss_node *node);

/* Parses a cached value "<version>|<ch>,<ch>,..." found while the user's version is
 * version (vlen bytes). Returns the number of ids, with them in *out (malloc'd, the
 * caller frees; NULL for none); -1 when the value belongs to another version, -2 when
 * it is malformed or holds more than WSS_MEMBERS_MAX ids. */
int wss_members_decode(const char *value, size_t len, const char *version, size_t vlen,
                       int64_t **out);

#endif
