/* gateway.h - the gateway role as a module (see app.h for the role contract). */
#ifndef CHORUS_GATEWAY_H
#define CHORUS_GATEWAY_H

#include "chorus/app.h"

extern const role_def gateway_role;
/* scaler.c: WSS replicas that follow the connection count. */
extern const role_def scaler_role;

#endif
