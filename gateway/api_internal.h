/* api_internal.h - what the parts of the REST API share inside the gateway. */
#ifndef CHORUS_GATEWAY_API_INTERNAL_H
#define CHORUS_GATEWAY_API_INTERNAL_H

#include "api.h"

#define API_MAX_ARGS 10

typedef struct api_route api_route;

/* One request in flight: what its function is called with, kept for a retry. */
typedef struct api_call {
    api *x;
    const api_route *rt;
    http_req *r;
    int attempts;
    int nparams;
    const char *params[API_MAX_ARGS]; /* point into the request or into caller */
    char caller[24];
    char *cache_key; /* history pages (api_history.c) */
} api_call;

/* Calls the route's function and answers from its result (api_routes.c). */
void api_call_run(api_call *c);
void api_call_free(api_call *c);

/* History pages through the page cache (api_history.c). */
history_cache *history_cache_new(void);
void history_cache_free(history_cache *c);
int api_history_prepare(api *x);
void api_history_run(api_call *c);

#endif
