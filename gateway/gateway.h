/* gateway.h - the gateway role as a module (see app.h for the role contract). */
#ifndef CHORUS_GATEWAY_H
#define CHORUS_GATEWAY_H

#include "chorus/app.h"

extern const role_def gateway_role;
/* scaler.c: WSS replicas that follow the connection count. */
extern const role_def scaler_role;
/* The sessions each of n nodes is asked to shed in one rebalancing round: conns[i] is
 * a node's sessions, < 0 when it is not live; the moves add up to at most budget
 * (give or take one a node for rounding). */
void scaler_moves(const long *conns, int n, double budget, long *moves);

#endif
