/* knock.c - the writers' side of the outbox knock (knock.h). */
#include "chorus/knock.h"

#include <stdbool.h>
#include <stdlib.h>

#include "chorus/metrics.h"
#include "chorus/status.h"

struct knocker {
    rclient *redis;
    bool in_flight;
    bool again; /* asked for while in flight */
    bool freed; /* knocker_free ran while in flight: the reply frees */
    metrics_series *m_sent;
};

static void send_knock(knocker *k);

static void on_reply(void *arg, redisReply *reply)
{
    knocker *k = arg;
    k->in_flight = false;
    if (k->freed) {
        free(k);
        return;
    }
    /* No reply: the connection went. The next write knocks again. */
    if (reply && k->again)
        send_knock(k);
}

static void send_knock(knocker *k)
{
    k->again = false;
    if (rclient_command(k->redis, on_reply, k, "XADD %s MAXLEN ~ %s * k 1", KNOCK_STREAM,
                        KNOCK_MAXLEN) != CHORUS_OK)
        return; /* Redis down or busy: the workers' polling finds the rows */
    k->in_flight = true;
    metrics_inc(k->m_sent);
}

knocker *knocker_new(rclient *redis)
{
    knocker *k = calloc(1, sizeof *k);
    if (!k)
        return NULL;
    k->redis = redis;
    k->m_sent = metrics_counter("chorus_outbox_knocks_total",
                                "knocks sent to the outbox workers after writes");
    return k;
}

void knocker_knock(knocker *k)
{
    if (!k)
        return;
    if (k->in_flight)
        k->again = true;
    else
        send_knock(k);
}

void knocker_free(knocker *k)
{
    if (!k)
        return;
    if (k->in_flight)
        k->freed = true;
    else
        free(k);
}
