/* outbox_memv.h - the membership-version bump of an outbox row (chorus/memv.h): which
 * events change their users' channel lists, and the one Redis command that bumps the
 * version of each of those users. Pure: no I/O, unit-tested
 * (tests/unit/test_outbox_memv.c); outbox_lane.c sends the command. */
#ifndef CHORUS_OUTBOX_MEMV_H
#define CHORUS_OUTBOX_MEMV_H

#include <stddef.h>

/* How long a version key lives after its last bump. Any time works for correctness (a
 * version never repeats, memv.h); this only bounds the keys of users who stay put. */
#define OUTBOX_MEMV_TTL_S 86400

/* One EVAL command: argv/lens as rclient_command_argv takes them. */
typedef struct outbox_bump {
    int argc;
    const char **argv;
    size_t *lens;
    char *text; /* the keys and numbers argv points into */
} outbox_bump;

/* The bump of a row of type event_type, whose user_ids column is user_ids (a bigint[]
 * literal, "" for NULL) and whose channel's members are members (the same format, or
 * ""; outbox_take reads them for channel.deleted only, whose user_ids is NULL).
 * Returns 1 (b holds the command: send it, then outbox_bump_free), 0 when the event
 * changes no channel list or names nobody (a list that does not parse names nobody),
 * or -1 when memory runs out; b is untouched unless 1 is returned. */
int outbox_bump_build(const char *event_type, const char *user_ids, const char *members,
                      outbox_bump *b);
void outbox_bump_free(outbox_bump *b);

#endif
