/* indexer.c - the search indexer: consumes the channel streams into the search index.
 * The role is registered and gets its shared clients; its work arrives with its issue. */
#include "indexer.h"

#include <stdlib.h>

#include "chorus/status.h"

typedef struct indexer_state {
    app *app;
} indexer_state;

static int indexer_start(app *a, void **state)
{
    indexer_state *s = calloc(1, sizeof *s);
    if (!s)
        return CHORUS_ERR;
    s->app = a;
    *state = s;
    return CHORUS_OK;
}

static void indexer_free(void *state)
{
    free(state);
}

const role_def indexer_role = {
    .name = "indexer",
    .needs_pg = true,
    .needs_redis = true,
    .start = indexer_start,
    .stop = NULL,
    .free = indexer_free,
};
