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
    double started;  /* when the history read began, and the freshness epoch then */
    unsigned long epoch;
} api_call;

/* Calls the route's function and answers from its result (api_routes.c). */
void api_call_run(api_call *c);
void api_call_free(api_call *c);

/* What the event streams tell about history pages (api_fresh.c). */
fresh *fresh_new(api *x);
void fresh_stop(fresh *f);
void fresh_free(fresh *f);
/* A cached page of seq page_seq may be served to user without Postgres. */
bool fresh_page_ok(fresh *f, int64_t user, int64_t ws, int64_t ch, long long page_seq,
                   double now);
unsigned long fresh_epoch(const fresh *f);
/* Postgres said user may read ch of ws, whose last_seq was last_seq, for a read that
 * began at started in epoch. */
void fresh_learn(fresh *f, int64_t user, int64_t ws, int64_t ch, long long last_seq,
                 double started, unsigned long epoch);
/* A write went through this gateway (ch: its channel, 0 when none). */
void fresh_note_write(fresh *f, const char *method, int64_t ch, double now);

/* History pages through the page cache (api_history.c). */
history_cache *history_cache_new(void);
void history_cache_free(history_cache *c);
int api_history_prepare(api *x);
void api_history_run(api_call *c);

#endif
