/* outbox_row.h - the pure parts of the outbox worker: an outbox row as a stream entry,
 * the streams it goes to, and which partitions a worker owns. No I/O, unit-tested
 * (tests/unit/test_outbox_row.c). */
#ifndef CHORUS_OUTBOX_ROW_H
#define CHORUS_OUTBOX_ROW_H

#include <stddef.h>
#include <stdint.h>

#include "chorus/buf.h"

/* Longest stream key: "chorus:ch:" plus a partition number (< 65536). */
#define OUTBOX_KEY_MAX 24

/* An outbox row as the worker selects it: every column in libpq's text format. */
typedef struct outbox_row {
    const char *id;
    const char *stream;      /* "ch" or "u" */
    const char *event_type;
    const char *workspace_id;
    const char *channel_id;  /* "" when NULL */
    const char *seq;         /* "" when NULL */
    const char *payload;     /* the event data: a JSON object */
    const char *user_ids;    /* a bigint[] literal "{1,2}", "" when NULL */
    const char *created_us;  /* created_at in microseconds since the epoch */
} outbox_row;

/* The row's envelope (event.h) appended to out as msgpack, and in *stream_parts the
 * partitions it must be appended to: for a channel event its channel's partition of the
 * "ch" family first, then the distinct partitions of its users in the "u" family; for a
 * user event the distinct partitions of its users. Each part is encoded as
 * family * 65536 + partition with family 0 = ch, 1 = u (see outbox_stream_key).
 * max_parts bounds stream_parts (EVENT_MAX_USERS + 1 always suffices).
 * Returns CHORUS_OK, or CHORUS_ERR with err set (a row the table's checks should have
 * refused: bad number, payload not an object, no users on a user event...). */
int outbox_row_encode(const outbox_row *row, int partitions, buf *out, int *stream_parts,
                      size_t max_parts, size_t *nparts, char *err, size_t errlen);

/* The Redis key of an encoded stream part: "chorus:ch:17" or "chorus:u:17". */
void outbox_stream_key(int stream_part, char key[OUTBOX_KEY_MAX]);

/* Parses a one-dimensional bigint[] literal ("{1,2,3}", "{}") into out (at most max
 * values). Returns the count, or -1 for anything else (NULLs, nesting, overflow, more
 * than max values). */
int outbox_parse_bigint_array(const char *text, int64_t *out, size_t max);

/* The partitions the worker self owns among the live workers (node ids, any order,
 * self included): with the ids sorted bytewise, the worker at rank r of n owns every p
 * in [0, partitions) with p % n == r. Writes them ascending to out (room for
 * partitions entries) and returns the count; 0 when self is not in live. */
int outbox_assign(const char *const *live, int nlive, const char *self, int partitions,
                  int *out);

#endif
