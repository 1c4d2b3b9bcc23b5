/* realtime.h - the gateway's realtime routing: POST /realtime/connect (realtime.c). */
#ifndef CHORUS_GATEWAY_REALTIME_H
#define CHORUS_GATEWAY_REALTIME_H

#include "api.h"

typedef struct realtime realtime;

/* Starts polling the WSS registry and adds the route to h. NULL on failure. */
realtime *realtime_new(app *a, api *x, httpd *h);
/* Stops polling (the app is stopping); the route answers 503 from then on. */
void realtime_stop(realtime *rt);
void realtime_free(realtime *rt);

#endif
