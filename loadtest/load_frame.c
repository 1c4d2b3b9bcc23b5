/* load_frame.c - what a harness session reads and sends, in either protocol of API.md:
 * chorus.json (text frames) or chorus.msgpack (binary frames carrying the same maps).
 *
 * Only what the checks need is read from a server frame: message.created's channel, seq
 * and the send time at the head of its text, "resumed", and hello's heartbeat_ms. The JSON side finds them with
 * strstr rather than a parser: the node writes compact JSON, and a worker reads thousands
 * of frames a second for each core it has.
 */
#include <limits.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "load.h"

/* ---- JSON --------------------------------------------------------------------------- */

static long long num_after(const char *s, const char *key)
{
    const char *p = strstr(s, key);
    return p ? atoll(p + strlen(key)) : -1;
}

/* p is NUL-terminated at p[n] (the reader keeps a spare byte). */
static frame_event read_json(const char *p)
{
    frame_event ev = {FRAME_OTHER, -1, -1, 0};
    /* The usual frame first: its type is found at once, the others' searches read the
     * whole frame. */
    if (strstr(p, "\"t\":\"message.created\"")) {
        ev.kind = FRAME_MESSAGE;
        ev.ch = num_after(p, "\"ch\":");
        ev.seq = num_after(p, "\"seq\":");
        long long sent = num_after(p, "\"text\":\"");
        ev.sent_us = sent > 0 ? (uint64_t)sent : 0;
    } else if (strstr(p, "\"t\":\"resumed\"")) {
        ev.kind = FRAME_RESUMED;
    } else if (strstr(p, "\"t\":\"hello\"")) {
        ev.kind = FRAME_HELLO;
        ev.seq = num_after(p, "\"heartbeat_ms\":");
    }
    return ev;
}

/* ---- msgpack ------------------------------------------------------------------------ */

static const msgpack_object *mp_get(const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t n = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
            memcmp(k->via.str.ptr, key, n) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

static bool mp_is(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);
    return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
           memcmp(o->via.str.ptr, s, n) == 0;
}

static long long mp_int(const msgpack_object *o)
{
    if (o && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= (uint64_t)LLONG_MAX)
        return (long long)o->via.u64;
    return -1;
}

/* The decimal number at the head of a string (the publisher's send time). */
static uint64_t mp_leading_number(const msgpack_object *o)
{
    uint64_t v = 0;
    if (!o || o->type != MSGPACK_OBJECT_STR)
        return 0;
    for (uint32_t i = 0; i < o->via.str.size && i < 20; i++) {
        char c = o->via.str.ptr[i];
        if (c < '0' || c > '9')
            break;
        v = v * 10 + (uint64_t)(c - '0');
    }
    return v;
}

static frame_event read_msgpack(const char *p, size_t n)
{
    frame_event ev = {FRAME_OTHER, -1, -1, 0};
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    if (msgpack_unpack_next(&u, p, n, NULL) == MSGPACK_UNPACK_SUCCESS) {
        const msgpack_object *t = mp_get(&u.data, "t");
        if (mp_is(t, "resumed")) {
            ev.kind = FRAME_RESUMED;
        } else if (mp_is(t, "hello")) {
            ev.kind = FRAME_HELLO;
            ev.seq = mp_int(mp_get(&u.data, "heartbeat_ms"));
        } else if (mp_is(t, "message.created")) {
            ev.kind = FRAME_MESSAGE;
            ev.ch = mp_int(mp_get(&u.data, "ch"));
            ev.seq = mp_int(mp_get(&u.data, "seq"));
            ev.sent_us = mp_leading_number(mp_get(mp_get(&u.data, "d"), "text"));
        }
    }
    msgpack_unpacked_destroy(&u);
    return ev;
}

frame_event frame_read(bool msgpack, const char *p, size_t n)
{
    return msgpack ? read_msgpack(p, n) : read_json(p);
}

/* ---- client ops --------------------------------------------------------------------- */

/* A packer that writes into a fixed buffer (ops are small: no allocation per op). */
typedef struct fixed {
    char *p;
    size_t len, cap;
    bool overflow;
} fixed;

static int fixed_write(void *data, const char *buf, size_t len)
{
    fixed *f = data;
    if (f->len + len > f->cap) {
        f->overflow = true;
        return -1;
    }
    memcpy(f->p + f->len, buf, len);
    f->len += len;
    return 0;
}

static void pack_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* {"op":name}, and with a channel (ch > 0) "positions":{"<ch>":last_seq} */
static size_t op_frame(bool msgpack, const char *name, long long ch, long long last_seq,
                       char *out, size_t cap)
{
    char key[24];
    snprintf(key, sizeof key, "%lld", ch); /* positions' keys are channel ids as strings */
    if (!msgpack) {
        int n = ch > 0 ? snprintf(out, cap, "{\"op\":\"%s\",\"positions\":{\"%s\":%lld}}", name,
                                  key, last_seq)
                       : snprintf(out, cap, "{\"op\":\"%s\"}", name);
        return n > 0 && (size_t)n < cap ? (size_t)n : 0;
    }
    fixed f = {out, 0, cap, false};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &f, fixed_write);
    msgpack_pack_map(&pk, ch > 0 ? 2 : 1);
    pack_str(&pk, "op");
    pack_str(&pk, name);
    if (ch > 0) {
        pack_str(&pk, "positions");
        msgpack_pack_map(&pk, 1);
        pack_str(&pk, key);
        msgpack_pack_int64(&pk, last_seq);
    }
    return f.overflow ? 0 : f.len;
}

size_t frame_ping(bool msgpack, char *out, size_t cap)
{
    return op_frame(msgpack, "ping", 0, 0, out, cap);
}

size_t frame_resume(bool msgpack, long long ch, long long last_seq, char *out, size_t cap)
{
    return op_frame(msgpack, "resume", ch, last_seq, out, cap);
}
