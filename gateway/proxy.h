/* proxy.h - the gateway's WebSocket relay to a WSS node (proxy.c). */
#ifndef CHORUS_GATEWAY_PROXY_H
#define CHORUS_GATEWAY_PROXY_H

#include <libwebsockets.h>

#include "realtime.h"

typedef struct proxy proxy;

/* Serves ws://<h>/ws by relaying to the node realtime_pick chooses. NULL on failure. */
proxy *proxy_new(app *a, realtime *rt, httpd *h);
void proxy_free(proxy *px);
int proxy_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                   size_t len);

#endif
