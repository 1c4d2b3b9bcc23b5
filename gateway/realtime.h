/* realtime.h - the gateway's realtime routing: POST /realtime/connect (realtime.c). */
#ifndef CHORUS_GATEWAY_REALTIME_H
#define CHORUS_GATEWAY_REALTIME_H

#include "api.h"

typedef struct realtime realtime;

/* Starts polling the WSS registry and adds the route to h. NULL on failure. */
realtime *realtime_new(app *a, api *x, httpd *h);
/* The node a new client goes to (counted as assigned), NULL when none has room. */
const struct wssreg_node *realtime_pick(realtime *rt);
/* Stops polling (the app is stopping); the route answers 503 from then on. */
void realtime_stop(realtime *rt);
void realtime_free(realtime *rt);

#endif
