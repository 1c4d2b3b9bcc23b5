/* outbox_memv.c - membership versions (outbox_memv.h, docs/OUTBOX.md "Membership
 * versions"). A WSS node trusts a cached channel list only while the user's version is
 * the one the list was read under (wss/wss_members.c); this is the other half: every
 * event that changes what the node's channel query returns bumps its users. */
#include "outbox_memv.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chorus/event.h"
#include "chorus/memv.h"
#include "outbox_row.h"

typedef enum { FROM_USERS, FROM_MEMBERS } bump_from;

/* The events that change the result of the node's query (channel_members of channels
 * not deleted). workspace.joined is not here: joining a workspace adds no channel
 * membership (each channel join is a member.joined of its own). */
static const struct {
    const char *type;
    bump_from from;
} bump_types[] = {
    {"channel.created", FROM_USERS},   /* users: the creator, its first member */
    {"member.joined", FROM_USERS},
    {"member.left", FROM_USERS},
    {"workspace.left", FROM_USERS},    /* the leaver's channel memberships went with it */
    /* The query does not filter deleted workspaces today; bumping keeps the cache right
     * if it ever does, for one command per deletion. */
    {"workspace.deleted", FROM_USERS},
    {"channel.deleted", FROM_MEMBERS}, /* its users are NULL: every member loses it */
};

/* A bump is one script for all of a row's users, so that a row costs one command
 * whatever its size (the batch's bound on commands in flight counts it as one). A key
 * that does not exist starts at the server clock (memv.h), never at 1. */
static const char bump_lua[] =
    MEMV_LUA_NOW
    "for _, k in ipairs(KEYS) do"
    " if redis.call('EXISTS', k) == 1 then redis.call('INCR', k)"
    " else redis.call('SET', k, now) end"
    " redis.call('EXPIRE', k, ARGV[1])"
    " end"
    " return #KEYS";

/* Where the row's target users come from; NULL when the event bumps nobody. */
static const char *bump_list(const char *event_type, const char *user_ids, const char *members)
{
    for (size_t i = 0; i < sizeof bump_types / sizeof bump_types[0]; i++)
        if (strcmp(event_type, bump_types[i].type) == 0)
            return bump_types[i].from == FROM_USERS ? user_ids : members;
    return NULL;
}

/* argv = EVAL script numkeys key... ttl, its strings in b->text. */
static int bump_fill(outbox_bump *b, const int64_t *users, int n)
{
    b->argc = n + 4;
    b->argv = malloc((size_t)b->argc * sizeof *b->argv);
    b->lens = malloc((size_t)b->argc * sizeof *b->lens);
    b->text = malloc((size_t)(n + 2) * MEMV_KEY_MAX);
    if (!b->argv || !b->lens || !b->text) {
        outbox_bump_free(b);
        return -1;
    }
    b->argv[0] = "EVAL";
    b->argv[1] = bump_lua;
    char *p = b->text;
    snprintf(p, MEMV_KEY_MAX, "%d", n);
    b->argv[2] = p;
    for (int i = 0; i < n; i++) {
        p += MEMV_KEY_MAX;
        snprintf(p, MEMV_KEY_MAX, MEMV_KEY_PREFIX "%lld", (long long)users[i]);
        b->argv[3 + i] = p;
    }
    p += MEMV_KEY_MAX;
    snprintf(p, MEMV_KEY_MAX, "%d", OUTBOX_MEMV_TTL_S);
    b->argv[3 + n] = p;
    for (int i = 0; i < b->argc; i++)
        b->lens[i] = strlen(b->argv[i]);
    return 1;
}

int outbox_bump_build(const char *event_type, const char *user_ids, const char *members,
                      outbox_bump *b)
{
    const char *list = bump_list(event_type, user_ids, members);
    if (!list || !*list)
        return 0;
    int64_t *users = malloc(EVENT_MAX_USERS * sizeof *users);
    if (!users)
        return -1;
    /* A list that does not parse names nobody we could bump; outbox_row_encode refuses
     * the same list, so the row goes out as undeliverable and is logged there. */
    int n = outbox_parse_bigint_array(list, users, EVENT_MAX_USERS);
    int rc = n > 0 ? bump_fill(b, users, n) : 0;
    free(users);
    return rc;
}

void outbox_bump_free(outbox_bump *b)
{
    free(b->argv);
    free(b->lens);
    free(b->text);
    b->argv = NULL;
    b->lens = NULL;
    b->text = NULL;
}
