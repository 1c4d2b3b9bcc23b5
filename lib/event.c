/* event.c - the outbox event envelope: msgpack (streams) and JSON (outbox, clients).
 *
 * Decoding treats every byte as hostile: stream entries can be written by anything that
 * reaches Redis. Before msgpack-c sees the input, mp_scan() walks it once and checks that
 * it is one complete object, that nesting is bounded, and that no container announces
 * more elements than bytes remain. The last check matters: msgpack-c allocates the
 * element array as soon as it reads a container header, so a 5-byte "array of 2^32-1
 * elements" would otherwise ask malloc for ~100 GB.
 *
 * Integers: msgpack has a separate uint64 type; values above INT64_MAX cannot be a
 * jansson json_int_t (long long) nor an int64_t field, so they are rejected (never
 * silently turned into reals, which would lose precision for ids).
 */
#include "chorus/event.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chorus/status.h"

/* Nesting bound of the generic JSON <-> msgpack conversions (event.h). */
#define CONV_MAX_DEPTH 64

/* msgpack-c's C unpacker keeps its parse stack in a fixed array of
 * MSGPACK_EMBED_STACK_SIZE (32) entries, chosen when the library was built: input that
 * nests deeper than 32 containers (empty ones included) cannot be decoded. The envelope
 * map is one level, so event data ("d" itself included) may nest 31 levels. The encoder
 * and event_from_json enforce the same bound, so everything written can be read back. */
#define ENVELOPE_MAX_DEPTH 32
#define DATA_MAX_DEPTH (ENVELOPE_MAX_DEPTH - 1)

/* Event types are short ASCII names ("message.created"); anything else is refused so
 * that a type can always be logged, used as a metrics label and put in a JSON frame. */
static bool type_ok(const char *p, size_t n)
{
    if (n == 0 || n >= EVENT_TYPE_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch < 0x21 || ch > 0x7e)
            return false;
    }
    return true;
}

void event_clear(chorus_event *ev)
{
    if (!ev)
        return;
    free(ev->users);
    json_decref(ev->data);
    memset(ev, 0, sizeof(*ev));
}

/* ---- JSON -> msgpack ------------------------------------------------------------- */

/* budget: how many more container levels may be opened below this point. */
static int pack_json(msgpack_packer *pk, const json_t *j, int budget)
{
    if (!j)
        return CHORUS_ERR;
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        if (budget <= 0 || msgpack_pack_map(pk, json_object_size(j)) != 0)
            return CHORUS_ERR;
        const char *key;
        size_t klen;
        json_t *v;
        /* jansson's iteration macros take a non-const object; nothing is modified. */
        json_object_keylen_foreach((json_t *)j, key, klen, v)
        {
            if (msgpack_pack_str_with_body(pk, key, klen) != 0)
                return CHORUS_ERR;
            if (pack_json(pk, v, budget - 1) != CHORUS_OK)
                return CHORUS_ERR;
        }
        return CHORUS_OK;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        if (budget <= 0 || msgpack_pack_array(pk, n) != 0)
            return CHORUS_ERR;
        for (size_t i = 0; i < n; i++)
            if (pack_json(pk, json_array_get(j, i), budget - 1) != CHORUS_OK)
                return CHORUS_ERR;
        return CHORUS_OK;
    }
    case JSON_STRING:
        return msgpack_pack_str_with_body(pk, json_string_value(j), json_string_length(j)) == 0
                   ? CHORUS_OK
                   : CHORUS_ERR;
    case JSON_INTEGER:
        return msgpack_pack_int64(pk, (int64_t)json_integer_value(j)) == 0 ? CHORUS_OK
                                                                           : CHORUS_ERR;
    case JSON_REAL:
        return msgpack_pack_double(pk, json_real_value(j)) == 0 ? CHORUS_OK : CHORUS_ERR;
    case JSON_TRUE:
        return msgpack_pack_true(pk) == 0 ? CHORUS_OK : CHORUS_ERR;
    case JSON_FALSE:
        return msgpack_pack_false(pk) == 0 ? CHORUS_OK : CHORUS_ERR;
    case JSON_NULL:
        return msgpack_pack_nil(pk) == 0 ? CHORUS_OK : CHORUS_ERR;
    }
    return CHORUS_ERR;
}

/* Returns CHORUS_OK, or CHORUS_ERR when j nests deeper than 64 containers or the
 * packer's write callback failed. */
int msgpack_pack_json(msgpack_packer *pk, const json_t *j)
{
    return pack_json(pk, j, CONV_MAX_DEPTH);
}

/* ---- msgpack -> JSON ------------------------------------------------------------- */

/* msgpack str and bin both become JSON strings (bin only when it is valid UTF-8, which
 * jansson checks). */
static bool mp_as_string(const msgpack_object *o, const char **p, size_t *n)
{
    if (o->type == MSGPACK_OBJECT_STR) {
        *p = o->via.str.ptr;
        *n = o->via.str.size;
    } else if (o->type == MSGPACK_OBJECT_BIN) {
        *p = o->via.bin.ptr;
        *n = o->via.bin.size;
    } else {
        return false;
    }
    if (*n == 0 || !*p)
        *p = "";
    return true;
}

static json_t *from_mp(const msgpack_object *o, int budget)
{
    const char *s;
    size_t n;
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return json_null();
    case MSGPACK_OBJECT_BOOLEAN:
        return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > (uint64_t)INT64_MAX)
            return NULL;
        return json_integer((json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return json_integer((json_int_t)o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return json_real(o->via.f64); /* NULL for NaN and infinities: JSON has none */
    case MSGPACK_OBJECT_STR:
    case MSGPACK_OBJECT_BIN:
        mp_as_string(o, &s, &n);
        return json_stringn(s, n);
    case MSGPACK_OBJECT_ARRAY: {
        if (budget <= 0)
            return NULL;
        json_t *a = json_array();
        if (!a)
            return NULL;
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            /* json_array_append_new takes the reference even when it fails */
            if (json_array_append_new(a, from_mp(&o->via.array.ptr[i], budget - 1)) != 0) {
                json_decref(a);
                return NULL;
            }
        }
        return a;
    }
    case MSGPACK_OBJECT_MAP: {
        if (budget <= 0)
            return NULL;
        json_t *obj = json_object();
        if (!obj)
            return NULL;
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            if (!mp_as_string(&kv->key, &s, &n) ||
                json_object_setn_new(obj, s, n, from_mp(&kv->val, budget - 1)) != 0) {
                json_decref(obj);
                return NULL;
            }
        }
        return obj;
    }
    default: /* EXT: no JSON equivalent */
        return NULL;
    }
}

/* NULL when o holds something JSON cannot (ext, uint64 > INT64_MAX, NaN, non-string
 * keys, invalid UTF-8), nests deeper than 64, or memory ran out. Duplicate map keys:
 * the last one wins. */
json_t *json_from_msgpack(const msgpack_object *o)
{
    if (!o)
        return NULL;
    return from_mp(o, CONV_MAX_DEPTH);
}

/* ---- hostile-input pre-scan -------------------------------------------------------- */

static uint64_t be_read(const unsigned char *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Walks the single msgpack object at p[0..n) without building it. On success returns
 * CHORUS_OK and *used = its encoded length; otherwise CHORUS_ERR with *why set. */
static int mp_scan(const unsigned char *p, size_t n, int max_depth, size_t *used,
                   const char **why)
{
    /* rem[0] counts the root; rem[k] the items still expected by the open container at
     * nesting level k. Maps expect two items (key, value) per entry. */
    uint64_t rem[ENVELOPE_MAX_DEPTH + 1];
    int top = 0;
    size_t off = 0;

    if (max_depth > ENVELOPE_MAX_DEPTH)
        max_depth = ENVELOPE_MAX_DEPTH;
    rem[0] = 1;
    for (;;) {
        while (top > 0 && rem[top] == 0)
            top--;
        if (top == 0 && rem[0] == 0)
            break;
        if (off >= n) {
            *why = "truncated";
            return CHORUS_ERR;
        }
        rem[top]--;
        unsigned b = p[off++];
        size_t hdr = 0;       /* length-field bytes that follow the type byte */
        uint64_t skip = 0;    /* payload bytes */
        uint64_t items = 0;   /* container elements */
        bool container = false;

        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            /* fixint, negative fixint, nil, false, true */
        } else if (b <= 0x8f) {
            container = true;
            items = 2u * (b & 0x0f);
        } else if (b <= 0x9f) {
            container = true;
            items = b & 0x0f;
        } else if (b <= 0xbf) {
            skip = b & 0x1f;
        } else {
            switch (b) {
            case 0xc4: case 0xd9: hdr = 1; break;             /* bin8, str8 */
            case 0xc5: case 0xda: hdr = 2; break;             /* bin16, str16 */
            case 0xc6: case 0xdb: hdr = 4; break;             /* bin32, str32 */
            case 0xc7: hdr = 1; skip = 1; break;              /* ext8 (+type) */
            case 0xc8: hdr = 2; skip = 1; break;              /* ext16 */
            case 0xc9: hdr = 4; skip = 1; break;              /* ext32 */
            case 0xca: skip = 4; break;                       /* float32 */
            case 0xcb: skip = 8; break;                       /* float64 */
            case 0xcc: case 0xd0: skip = 1; break;            /* (u)int8 */
            case 0xcd: case 0xd1: skip = 2; break;            /* (u)int16 */
            case 0xce: case 0xd2: skip = 4; break;            /* (u)int32 */
            case 0xcf: case 0xd3: skip = 8; break;            /* (u)int64 */
            case 0xd4: skip = 2; break;                       /* fixext1 */
            case 0xd5: skip = 3; break;                       /* fixext2 */
            case 0xd6: skip = 5; break;                       /* fixext4 */
            case 0xd7: skip = 9; break;                       /* fixext8 */
            case 0xd8: skip = 17; break;                      /* fixext16 */
            case 0xdc: container = true; hdr = 2; break;      /* array16 */
            case 0xdd: container = true; hdr = 4; break;      /* array32 */
            case 0xde: container = true; hdr = 2; break;      /* map16 */
            case 0xdf: container = true; hdr = 4; break;      /* map32 */
            default: /* 0xc1 is never used */
                *why = "invalid msgpack byte";
                return CHORUS_ERR;
            }
            if (hdr) {
                if (n - off < hdr) {
                    *why = "truncated";
                    return CHORUS_ERR;
                }
                uint64_t v = be_read(p + off, hdr);
                off += hdr;
                if (container)
                    items = (b == 0xde || b == 0xdf) ? 2 * v : v;
                else
                    skip += v;
            }
        }
        if (container) {
            if (top + 1 > max_depth) {
                *why = "nested too deep";
                return CHORUS_ERR;
            }
            /* every element takes at least one byte */
            if (items > n - off) {
                *why = "truncated";
                return CHORUS_ERR;
            }
            if (items > 0)
                rem[++top] = items;
        } else {
            if (skip > n - off) {
                *why = "truncated";
                return CHORUS_ERR;
            }
            off += (size_t)skip;
        }
    }
    *used = off;
    return CHORUS_OK;
}

/* ---- the envelope in msgpack ------------------------------------------------------- */

typedef struct pack_sink {
    buf *out;
    int rc; /* first buf error: CHORUS_AGAIN (bound) or CHORUS_ERR (memory) */
} pack_sink;

static int sink_write(void *data, const char *p, size_t n)
{
    pack_sink *s = data;
    int rc = buf_append(s->out, p, n);
    if (rc != CHORUS_OK) {
        if (s->rc == CHORUS_OK)
            s->rc = rc;
        return -1;
    }
    return 0;
}

static int pack_key(msgpack_packer *pk, const char *k)
{
    return msgpack_pack_str_with_body(pk, k, strlen(k));
}

static int pack_kv_i64(msgpack_packer *pk, const char *k, int64_t v)
{
    return pack_key(pk, k) == 0 && msgpack_pack_int64(pk, v) == 0 ? 0 : -1;
}

/* Checks what every encoder requires of an event; NULL when fine. */
static const char *event_invalid(const chorus_event *ev)
{
    if (!type_ok(ev->type, strnlen(ev->type, EVENT_TYPE_MAX)))
        return "bad type";
    if (ev->n_users > EVENT_MAX_USERS)
        return "too many users";
    if (ev->n_users > 0 && !ev->users)
        return "users missing";
    if (ev->data && !json_is_object(ev->data))
        return "d is not an object";
    return NULL;
}

static int pack_envelope(msgpack_packer *pk, const chorus_event *ev)
{
    size_t nkeys = 5 + (ev->channel_id != 0) + (ev->seq != 0) + (ev->n_users > 0);
    if (msgpack_pack_map(pk, nkeys) != 0 || pack_kv_i64(pk, "id", ev->id) != 0 ||
        pack_key(pk, "type") != 0 ||
        msgpack_pack_str_with_body(pk, ev->type, strlen(ev->type)) != 0 ||
        pack_kv_i64(pk, "ws", ev->workspace_id) != 0)
        return CHORUS_ERR;
    if (ev->channel_id != 0 && pack_kv_i64(pk, "ch", ev->channel_id) != 0)
        return CHORUS_ERR;
    if (ev->seq != 0 && pack_kv_i64(pk, "seq", ev->seq) != 0)
        return CHORUS_ERR;
    if (ev->n_users > 0) {
        if (pack_key(pk, "users") != 0 || msgpack_pack_array(pk, ev->n_users) != 0)
            return CHORUS_ERR;
        for (size_t i = 0; i < ev->n_users; i++)
            if (msgpack_pack_int64(pk, ev->users[i]) != 0)
                return CHORUS_ERR;
    }
    if (pack_kv_i64(pk, "at", ev->created_at_us) != 0 || pack_key(pk, "d") != 0)
        return CHORUS_ERR;
    if (!ev->data)
        return msgpack_pack_map(pk, 0) == 0 ? CHORUS_OK : CHORUS_ERR;
    return pack_json(pk, ev->data, DATA_MAX_DEPTH);
}

int event_encode_msgpack(const chorus_event *ev, buf *out)
{
    if (!ev || !out || event_invalid(ev))
        return CHORUS_ERR;
    size_t start = out->len;
    pack_sink sink = {out, CHORUS_OK};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sink, sink_write);
    if (pack_envelope(&pk, ev) == CHORUS_OK)
        return CHORUS_OK;
    /* leave out as it was: a caller that gets CHORUS_AGAIN may flush and retry */
    out->len = start;
    if (out->data)
        out->data[start] = '\0';
    return sink.rc != CHORUS_OK ? sink.rc : CHORUS_ERR;
}

enum {
    K_ID = 1 << 0,
    K_TYPE = 1 << 1,
    K_WS = 1 << 2,
    K_CH = 1 << 3,
    K_SEQ = 1 << 4,
    K_USERS = 1 << 5,
    K_AT = 1 << 6,
    K_D = 1 << 7,
};

static int key_bit(const char *k, size_t n)
{
    static const struct {
        const char *name;
        int bit;
    } keys[] = {
        {"id", K_ID}, {"type", K_TYPE}, {"ws", K_WS},   {"ch", K_CH},
        {"seq", K_SEQ}, {"users", K_USERS}, {"at", K_AT}, {"d", K_D},
    };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (strlen(keys[i].name) == n && memcmp(keys[i].name, k, n) == 0)
            return keys[i].bit;
    return 0;
}

static bool mp_i64(const msgpack_object *o, int64_t *out)
{
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= (uint64_t)INT64_MAX) {
        *out = (int64_t)o->via.u64;
        return true;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = o->via.i64;
        return true;
    }
    return false;
}

static const char *key_name(int bit)
{
    switch (bit) {
    case K_ID: return "id";
    case K_TYPE: return "type";
    case K_WS: return "ws";
    case K_CH: return "ch";
    case K_SEQ: return "seq";
    case K_USERS: return "users";
    case K_AT: return "at";
    default: return "d";
    }
}

/* Fills ev (zeroed by the caller) from the envelope map; CHORUS_ERR with err set. */
static int envelope_from_mp(const msgpack_object *root, chorus_event *ev, char *err,
                            size_t errlen)
{
    if (root->type != MSGPACK_OBJECT_MAP) {
        chorus_set_err(err, errlen, "not a map");
        return CHORUS_ERR;
    }
    int seen = 0;
    for (uint32_t i = 0; i < root->via.map.size; i++) {
        const msgpack_object *k = &root->via.map.ptr[i].key;
        const msgpack_object *v = &root->via.map.ptr[i].val;
        const char *ks;
        size_t kn;
        if (!mp_as_string(k, &ks, &kn)) {
            chorus_set_err(err, errlen, "map key is not a string");
            return CHORUS_ERR;
        }
        int bit = key_bit(ks, kn);
        if (bit == 0)
            continue; /* unknown keys are allowed: the envelope may grow */
        if (seen & bit) {
            chorus_set_err(err, errlen, "duplicate key %s", key_name(bit));
            return CHORUS_ERR;
        }
        seen |= bit;
        bool ok = true;
        switch (bit) {
        case K_ID: ok = mp_i64(v, &ev->id); break;
        case K_WS: ok = mp_i64(v, &ev->workspace_id); break;
        case K_CH: ok = mp_i64(v, &ev->channel_id); break;
        case K_SEQ: ok = mp_i64(v, &ev->seq); break;
        case K_AT: ok = mp_i64(v, &ev->created_at_us); break;
        case K_TYPE: {
            const char *s;
            size_t n;
            ok = mp_as_string(v, &s, &n) && type_ok(s, n);
            if (ok) {
                memcpy(ev->type, s, n);
                ev->type[n] = '\0';
            }
            break;
        }
        case K_USERS: {
            if (v->type != MSGPACK_OBJECT_ARRAY) {
                ok = false;
                break;
            }
            uint32_t n = v->via.array.size;
            if (n > EVENT_MAX_USERS) {
                chorus_set_err(err, errlen, "too many users (%u > %d)", n, EVENT_MAX_USERS);
                return CHORUS_ERR;
            }
            if (n == 0)
                break;
            ev->users = malloc(n * sizeof(*ev->users));
            if (!ev->users) {
                chorus_set_err(err, errlen, "out of memory");
                return CHORUS_ERR;
            }
            for (uint32_t u = 0; u < n && ok; u++)
                ok = mp_i64(&v->via.array.ptr[u], &ev->users[u]);
            ev->n_users = n;
            break;
        }
        case K_D:
            if (v->type == MSGPACK_OBJECT_NIL)
                break;
            if (v->type != MSGPACK_OBJECT_MAP) {
                ok = false;
                break;
            }
            ev->data = from_mp(v, DATA_MAX_DEPTH);
            if (!ev->data) {
                chorus_set_err(err, errlen, "d is not representable as JSON");
                return CHORUS_ERR;
            }
            break;
        }
        if (!ok) {
            chorus_set_err(err, errlen, "bad value for %s", key_name(bit));
            return CHORUS_ERR;
        }
    }
    if (!(seen & K_ID) || !(seen & K_TYPE)) {
        chorus_set_err(err, errlen, "missing %s", (seen & K_ID) ? "type" : "id");
        return CHORUS_ERR;
    }
    return CHORUS_OK;
}

/* ev is an output: its previous content is not freed (event_clear it before reuse). */
int event_decode_msgpack(const char *p, size_t n, chorus_event *ev, char *err, size_t errlen)
{
    if (!ev)
        return CHORUS_ERR;
    memset(ev, 0, sizeof(*ev));
    if (!p || n == 0) {
        chorus_set_err(err, errlen, "empty");
        return CHORUS_ERR;
    }
    const char *why = NULL;
    size_t used = 0;
    if (mp_scan((const unsigned char *)p, n, ENVELOPE_MAX_DEPTH, &used, &why) != CHORUS_OK) {
        chorus_set_err(err, errlen, "%s", why);
        return CHORUS_ERR;
    }
    if (used != n) {
        chorus_set_err(err, errlen, "trailing bytes after the envelope");
        return CHORUS_ERR;
    }
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack_next(&u, p, n, &off);
    int rc;
    if (ur != MSGPACK_UNPACK_SUCCESS || off != n) {
        /* the scan accepted it, so only memory can have failed */
        chorus_set_err(err, errlen, "msgpack unpack failed (%d)", (int)ur);
        rc = CHORUS_ERR;
    } else {
        rc = envelope_from_mp(&u.data, ev, err, errlen);
    }
    msgpack_unpacked_destroy(&u);
    if (rc != CHORUS_OK)
        event_clear(ev);
    return rc;
}

/* ---- the envelope in JSON ---------------------------------------------------------- */

/* Sets key to a new value; false when the value is NULL or the set failed. */
static bool obj_set(json_t *o, const char *key, json_t *v)
{
    return v && json_object_set_new(o, key, v) == 0;
}

/* d shares the event's data object (a new reference), so fanning one event out to many
 * sessions costs no copy. */
json_t *event_to_frame_json(const chorus_event *ev)
{
    if (!ev || event_invalid(ev))
        return NULL;
    json_t *o = json_object();
    if (!o)
        return NULL;
    bool ok = obj_set(o, "t", json_string(ev->type)) &&
              obj_set(o, "ws", json_integer(ev->workspace_id));
    if (ok && ev->channel_id != 0)
        ok = obj_set(o, "ch", json_integer(ev->channel_id));
    if (ok && ev->seq != 0)
        ok = obj_set(o, "seq", json_integer(ev->seq));
    if (ok)
        ok = obj_set(o, "d", ev->data ? json_incref(ev->data) : json_object());
    if (!ok) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* Like the frame, d is shared with the event. */
json_t *event_to_json(const chorus_event *ev)
{
    if (!ev || event_invalid(ev))
        return NULL;
    json_t *o = json_object();
    if (!o)
        return NULL;
    bool ok = obj_set(o, "id", json_integer(ev->id)) &&
              obj_set(o, "type", json_string(ev->type)) &&
              obj_set(o, "ws", json_integer(ev->workspace_id));
    if (ok && ev->channel_id != 0)
        ok = obj_set(o, "ch", json_integer(ev->channel_id));
    if (ok && ev->seq != 0)
        ok = obj_set(o, "seq", json_integer(ev->seq));
    if (ok && ev->n_users > 0) {
        json_t *a = json_array();
        ok = obj_set(o, "users", a);
        for (size_t i = 0; ok && i < ev->n_users; i++)
            ok = json_array_append_new(a, json_integer(ev->users[i])) == 0;
    }
    if (ok)
        ok = obj_set(o, "at", json_integer(ev->created_at_us));
    if (ok)
        ok = obj_set(o, "d", ev->data ? json_incref(ev->data) : json_object());
    if (!ok) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* True when j nests at most budget containers deep; recursion stops at the bound. */
static bool json_depth_ok(const json_t *j, int budget)
{
    if (json_is_object(j)) {
        if (budget <= 0)
            return false;
        const char *key;
        json_t *v;
        json_object_foreach((json_t *)j, key, v)
        {
            if (!json_depth_ok(v, budget - 1))
                return false;
        }
    } else if (json_is_array(j)) {
        if (budget <= 0)
            return false;
        for (size_t i = 0; i < json_array_size(j); i++)
            if (!json_depth_ok(json_array_get(j, i), budget - 1))
                return false;
    }
    return true;
}

static bool json_i64(const json_t *j, int64_t *out)
{
    if (!json_is_integer(j))
        return false;
    *out = (int64_t)json_integer_value(j);
    return true;
}

/* Same rules as the msgpack decoder: id and type required, ws/ch/seq/at default to 0,
 * users and d optional (d may be null), unknown keys ignored. d is deep-copied, so ev
 * does not depend on j afterwards. */
int event_from_json(const json_t *j, chorus_event *ev, char *err, size_t errlen)
{
    if (!ev)
        return CHORUS_ERR;
    memset(ev, 0, sizeof(*ev));
    if (!json_is_object(j)) {
        chorus_set_err(err, errlen, "not an object");
        return CHORUS_ERR;
    }
    const json_t *v;
    const char *bad = NULL;
    if (!(v = json_object_get(j, "id")))
        bad = "missing id";
    else if (!json_i64(v, &ev->id))
        bad = "bad value for id";
    if (!bad) {
        v = json_object_get(j, "type");
        if (!v)
            bad = "missing type";
        else if (!json_is_string(v) || !type_ok(json_string_value(v), json_string_length(v)))
            bad = "bad value for type";
        else
            memcpy(ev->type, json_string_value(v), json_string_length(v) + 1);
    }
    static const char *const ikeys[] = {"ws", "ch", "seq", "at"};
    int64_t *ivals[] = {&ev->workspace_id, &ev->channel_id, &ev->seq, &ev->created_at_us};
    for (size_t i = 0; !bad && i < sizeof(ikeys) / sizeof(ikeys[0]); i++) {
        v = json_object_get(j, ikeys[i]);
        if (v && !json_i64(v, ivals[i])) {
            chorus_set_err(err, errlen, "bad value for %s", ikeys[i]);
            event_clear(ev);
            return CHORUS_ERR;
        }
    }
    if (!bad && (v = json_object_get(j, "users")) && !json_is_null(v)) {
        size_t n = json_array_size(v);
        if (!json_is_array(v)) {
            bad = "bad value for users";
        } else if (n > EVENT_MAX_USERS) {
            bad = "too many users";
        } else if (n > 0) {
            ev->users = malloc(n * sizeof(*ev->users));
            if (!ev->users)
                bad = "out of memory";
            for (size_t i = 0; !bad && i < n; i++)
                if (!json_i64(json_array_get(v, i), &ev->users[i]))
                    bad = "bad value for users";
            ev->n_users = n;
        }
    }
    if (!bad && (v = json_object_get(j, "d")) && !json_is_null(v)) {
        if (!json_is_object(v) || !json_depth_ok(v, DATA_MAX_DEPTH))
            bad = "bad value for d";
        else if (!(ev->data = json_deep_copy(v)))
            bad = "out of memory";
    }
    if (bad) {
        chorus_set_err(err, errlen, "%s", bad);
        event_clear(ev);
        return CHORUS_ERR;
    }
    return CHORUS_OK;
}
