/* wssreg.h - reading the WSS node registry (docs/WSS.md "Registry and capacity").
 *
 * Every WSS node writes chorus:wss:node:<id> (url, connections, capacity, events_per_s,
 * draining, updated_ms) each second and its id into the sorted set chorus:wss:nodes.
 * A wssreg polls both every interval_ms (one ZRANGEBYSCORE, then one pipelined HGETALL
 * per node) and keeps the last complete view: what the gateway routes by and what the
 * scaler decides from. A poll with a lost or failed reply changes nothing: the view
 * stays the last complete one.
 *
 * A node is live when its entry was at most WSSREG_FRESH_MS old when the view was read
 * (not now): if Redis stalls or this process is not scheduled for a few seconds, the
 * view gets old but the nodes in it are no less alive. How old a view may be and still
 * be used is the owner's trust_ms: past it, wssreg_pick answers no node.
 *
 * Between two writes of a node, the gateway counts its own assignments to it (a client
 * told to go there is about to connect), so that a burst of connects is spread instead
 * of sent to whichever node looked emptiest at the last write.
 */
#ifndef CHORUS_WSSREG_H
#define CHORUS_WSSREG_H

#include <stdbool.h>
#include <stdint.h>

#include <ev.h>

#include "chorus/rclient.h"

#define WSSREG_FRESH_MS 3000
/* A node silent for longer is gone: its entry expires (the node sets this expiry) and
 * the presence sweep counts it dead. Between the two it is stalled: not live, but a
 * last resort for wssreg_pick. */
#define WSSREG_RECENT_MS 5000
#define WSSREG_MAX_NODES 256
#define WSSREG_ID_MAX 128
#define WSSREG_URL_MAX 256

typedef struct wssreg_node {
    char id[WSSREG_ID_MAX];
    char url[WSSREG_URL_MAX];
    long connections;
    long capacity;
    double events_per_s;
    bool draining;
    double updated_ms;
    long assigned;     /* sent there by this process since its last write (estimate) */
} wssreg_node;

typedef struct wssreg wssreg;

/* Polls through r (not owned) every interval_ms; a view is trusted while it is at most
 * trust_ms old. NULL on bad arguments. */
wssreg *wssreg_new(struct ev_loop *loop, rclient *r, int interval_ms, int trust_ms);
void wssreg_free(wssreg *g);

/* The nodes of the last complete poll (any state), n of them; valid until the next
 * poll completes (the loop runs). */
const wssreg_node *wssreg_nodes(const wssreg *g, int *n);
/* True once a poll has completed. */
bool wssreg_ready(const wssreg *g);
/* A poll has completed and the view was read at most trust_ms before now_ms. */
bool wssreg_trusted(const wssreg *g, double now_ms);
/* When the view's poll was sent (ev_now in ms); 0 before the first. */
double wssreg_read_ms(const wssreg *g);

/* Not draining, and fresh when the view was read. n is one of g's nodes. */
bool wssreg_live(const wssreg *g, const wssreg_node *n);
/* Live with room: connections + assigned < capacity. */
bool wssreg_available(const wssreg *g, const wssreg_node *n);
/* The live node with the lowest (connections + assigned) / capacity, then the lowest
 * events/s. When no live node has room, the same among stalled ones (not draining,
 * silent for at most WSSREG_RECENT_MS when the view was read): on a starved host whole
 * fleets miss a write or two, and a client sent to a node whose loop is late is
 * accepted a little later, where a 503 only sends it back a second later. NULL when
 * none has room or the view is not trusted. Counts the assignment. */
const wssreg_node *wssreg_pick(wssreg *g, double now_ms);

#endif
