/* event.h - the outbox event envelope and its encodings.
 *
 * An event is what a write transaction puts into the outbox and what every consumer
 * (WSS nodes, search indexer) reads from a Redis stream. On the stream it is msgpack:
 * a map with the keys
 *   "id" (int, outbox id), "type" (str), "ws" (int, workspace id),
 *   "ch" (int, channel id; absent for user events), "seq" (int; absent when no seq),
 *   "users" (array of int: user targets; absent when empty),
 *   "at" (int, created_at in microseconds since the epoch), "d" (map: event data).
 * Keys are short because every entry is stored and read many times. Decoders ignore
 * unknown keys so the envelope can grow.
 *
 * The JSON client frame (API.md) is {"t":type,"ws":..,"ch":..,"seq":..,"d":{...}}.
 */
#ifndef CHORUS_EVENT_H
#define CHORUS_EVENT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <msgpack.h>

#include "chorus/buf.h"

#define EVENT_TYPE_MAX 32
#define EVENT_MAX_USERS 10000

typedef struct chorus_event {
    int64_t id;
    char type[EVENT_TYPE_MAX];
    int64_t workspace_id;
    int64_t channel_id;   /* 0: not a channel event */
    int64_t seq;          /* 0: no seq */
    int64_t *users;       /* user targets, heap, n_users entries; NULL when none */
    size_t n_users;
    int64_t created_at_us;
    json_t *data;         /* a JSON object, owned by the event (NULL means {}) */
} chorus_event;

/* Frees users and data and zeroes the event. */
void event_clear(chorus_event *ev);

/* Appends the msgpack envelope to out. Returns CHORUS_OK, CHORUS_AGAIN (out's bound)
 * or CHORUS_ERR (data not representable). */
int event_encode_msgpack(const chorus_event *ev, buf *out);

/* Decodes one envelope. On success ev owns new data; on failure ev is cleared and err
 * says what was wrong (truncated, not a map, missing id/type, too many users...). */
int event_decode_msgpack(const char *p, size_t n, chorus_event *ev, char *err, size_t errlen);

/* The client frame as JSON (new reference), or NULL out of memory. */
json_t *event_to_frame_json(const chorus_event *ev);

/* The whole envelope as JSON (same keys as the msgpack map) and back; used by the
 * outbox table's payload column and by tests. */
json_t *event_to_json(const chorus_event *ev);
int event_from_json(const json_t *j, chorus_event *ev, char *err, size_t errlen);

/* Generic conversions between JSON values and msgpack, shared with the WSS msgpack
 * protocol. Integers stay integers, reals stay doubles; msgpack map keys must be
 * strings (others make json_from_msgpack fail). depth is bounded (64) so hostile input
 * cannot exhaust the stack. */
int msgpack_pack_json(msgpack_packer *pk, const json_t *j);
json_t *json_from_msgpack(const msgpack_object *o);

#endif
