/* outbox_knock.c - the workers' side of the knock (knock.h, docs/OUTBOX.md "Wake-up"):
 * a connection of its own blocked on XREAD of the knock stream; every reply with entries
 * wakes the worker's idle lanes. Reading resumes after the last knock read, also after
 * a reconnect, so a knock sent while the connection was down still wakes the lanes.
 */
#include <stdio.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "chorus/knock.h"
#include "chorus/log.h"
#include "chorus/rclient.h"
#include "chorus/status.h"
#include "outbox_internal.h"

/* Short enough that a stop never waits long for the read in flight. */
#define KNOCK_BLOCK_MS 1000
#define KNOCK_RETRY_S 1.0

static void knock_read(outbox_worker *w);

/* The id of the last entry of an XREAD reply: [[key, [[id, [field, value]], ...]]]. */
static void remember_last(outbox_worker *w, const redisReply *reply)
{
    const redisReply *s = reply->element[0];
    if (s->type != REDIS_REPLY_ARRAY || s->elements != 2 ||
        s->element[1]->type != REDIS_REPLY_ARRAY || s->element[1]->elements == 0)
        return;
    const redisReply *e = s->element[1]->element[s->element[1]->elements - 1];
    if (e->type == REDIS_REPLY_ARRAY && e->elements >= 1 &&
        e->element[0]->type == REDIS_REPLY_STRING && e->element[0]->len < sizeof w->knock_id)
        snprintf(w->knock_id, sizeof w->knock_id, "%s", e->element[0]->str);
}

static void on_knock(void *arg, redisReply *reply)
{
    outbox_worker *w = arg;
    w->knock_reading = false;
    if (!reply) /* connection lost: on_state reads again once it is back */
        return;
    if (reply->type == REDIS_REPLY_ERROR) { /* not a stream, say: do not spin on it */
        log_warn("outbox: reading %s: %.*s", KNOCK_STREAM, (int)reply->len, reply->str);
        ev_timer_start(w->loop, &w->knock_retry);
        return;
    }
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements > 0) {
        remember_last(w, reply);
        outbox_lanes_knock(w);
    }
    knock_read(w);
}

static void knock_read(outbox_worker *w)
{
    if (w->stopping || w->knock_reading || !w->knock || !rclient_connected(w->knock))
        return;
    if (rclient_command(w->knock, on_knock, w, "XREAD COUNT 100 BLOCK %d STREAMS %s %s",
                        KNOCK_BLOCK_MS, KNOCK_STREAM, w->knock_id) == CHORUS_OK)
        w->knock_reading = true;
}

static void on_state(void *arg, bool connected)
{
    if (connected)
        knock_read(arg);
}

static void on_retry(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    knock_read(t->data);
}

int outbox_knock_start(outbox_worker *w)
{
    rclient_opts ro = {.url = w->cfg->redis_url,
                       .name = "outbox-knock",
                       .max_pending = 2,
                       .backoff_min_ms = 50,
                       .backoff_max_ms = 2000,
                       .command_timeout_ms = KNOCK_BLOCK_MS + 5000};
    snprintf(w->knock_id, sizeof w->knock_id, "$");
    ev_timer_init(&w->knock_retry, on_retry, KNOCK_RETRY_S, 0);
    w->knock_retry.data = w;
    w->knock = rclient_new(w->loop, &ro);
    if (!w->knock)
        return CHORUS_ERR;
    rclient_on_state(w->knock, on_state, w);
    return CHORUS_OK;
}

void outbox_knock_free(outbox_worker *w)
{
    if (w->loop)
        ev_timer_stop(w->loop, &w->knock_retry);
    if (w->knock)
        rclient_free(w->knock); /* the read in flight gets its NULL reply */
    w->knock = NULL;
}
