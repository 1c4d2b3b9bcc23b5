/* wssreg.h - reading the WSS node registry (docs/WSS.md "Registry and capacity").
 *
 * Every WSS node writes chorus:wss:node:<id> (url, connections, capacity, events_per_s,
 * draining, updated_ms) each second and its id into the sorted set chorus:wss:nodes.
 * A wssreg polls both every interval_ms (one ZRANGEBYSCORE, then one pipelined HGETALL
 * per node) and keeps the last complete view: what the gateway routes by and what the
 * scaler decides from. A node is live when its entry is at most WSSREG_FRESH_MS old.
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

/* Polls through r (not owned) every interval_ms. NULL on bad arguments. */
wssreg *wssreg_new(struct ev_loop *loop, rclient *r, int interval_ms);
void wssreg_free(wssreg *g);

/* The nodes of the last complete poll (any state), n of them; valid until the next
 * poll completes (the loop runs). */
const wssreg_node *wssreg_nodes(const wssreg *g, int *n);
/* True once a poll has completed. */
bool wssreg_ready(const wssreg *g);

/* Live (fresh, not draining) with room: connections + assigned < capacity. */
bool wssreg_available(const wssreg_node *n, double now_ms);
/* The live node with the lowest (connections + assigned) / capacity, then the lowest
 * events/s; NULL when none has room. Counts the assignment. */
const wssreg_node *wssreg_pick(wssreg *g, double now_ms);

#endif
