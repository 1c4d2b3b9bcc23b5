/* outbox.c - the outbox worker: publishes the outbox to Redis Streams.
 * The role is registered and gets its shared clients; its work arrives with its issue. */
#include "outbox.h"

#include <stdlib.h>

#include "chorus/status.h"

typedef struct outbox_state {
    app *app;
} outbox_state;

static int outbox_start(app *a, void **state)
{
    outbox_state *s = calloc(1, sizeof *s);
    if (!s)
        return CHORUS_ERR;
    s->app = a;
    *state = s;
    return CHORUS_OK;
}

static void outbox_free(void *state)
{
    free(state);
}

const role_def outbox_role = {
    .name = "outbox",
    .needs_pg = true,
    .needs_redis = true,
    .start = outbox_start,
    .stop = NULL,
    .free = outbox_free,
};
