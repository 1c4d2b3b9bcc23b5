/* test_event.c - the event envelope: msgpack and JSON round trips, the client frame,
 * and a decoder that survives hostile input (truncation, random bytes, depth bombs). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chorus/buf.h"
#include "chorus/event.h"
#include "chorus/status.h"
#include "testutil.h"

/* ---- helpers --------------------------------------------------------------------- */

static json_t *load(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, 0, &e);
    if (!j)
        fail_msg("bad test JSON: %s", e.text);
    return j;
}

static void assert_events_equal(const chorus_event *a, const chorus_event *b)
{
    assert_true(a->id == b->id);
    assert_string_equal(a->type, b->type);
    assert_true(a->workspace_id == b->workspace_id);
    assert_true(a->channel_id == b->channel_id);
    assert_true(a->seq == b->seq);
    assert_true(a->created_at_us == b->created_at_us);
    assert_int_equal(a->n_users, b->n_users);
    for (size_t i = 0; i < a->n_users; i++)
        assert_true(a->users[i] == b->users[i]);
    json_t *ea = json_object(), *eb = json_object();
    assert_true(json_equal(a->data ? a->data : ea, b->data ? b->data : eb));
    json_decref(ea);
    json_decref(eb);
}

/* msgpack round trip, then JSON round trip; both must give the event back. */
static void round_trip(const chorus_event *ev)
{
    buf b;
    buf_init(&b, 0);
    assert_int_equal(event_encode_msgpack(ev, &b), CHORUS_OK);
    chorus_event back;
    char err[128] = "";
    assert_int_equal(event_decode_msgpack(b.data, b.len, &back, err, sizeof err), CHORUS_OK);
    assert_events_equal(ev, &back);
    event_clear(&back);
    buf_free(&b);

    json_t *j = event_to_json(ev);
    assert_non_null(j);
    /* through text too: what the outbox payload column stores */
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    assert_non_null(text);
    j = load(text);
    free(text);
    assert_int_equal(event_from_json(j, &back, err, sizeof err), CHORUS_OK);
    json_decref(j);
    assert_events_equal(ev, &back);
    event_clear(&back);
}

/* True when the top-level msgpack map at p has key k. */
static bool mp_has_key(const char *p, size_t n, const char *k)
{
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    bool found = false;
    if (msgpack_unpack_next(&u, p, n, &off) == MSGPACK_UNPACK_SUCCESS &&
        u.data.type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < u.data.via.map.size; i++) {
            msgpack_object key = u.data.via.map.ptr[i].key;
            if (key.type == MSGPACK_OBJECT_STR && key.via.str.size == strlen(k) &&
                memcmp(key.via.str.ptr, k, key.via.str.size) == 0)
                found = true;
        }
    }
    msgpack_unpacked_destroy(&u);
    return found;
}

static void channel_event(chorus_event *ev)
{
    memset(ev, 0, sizeof *ev);
    ev->id = 9001;
    strcpy(ev->type, "message.created");
    ev->workspace_id = 7;
    ev->channel_id = 42;
    ev->seq = 1234;
    ev->created_at_us = 1700000000123456;
    ev->data = load("{\"id\":55,\"text\":\"h\\u00e9llo \\u4e16\\u754c \\ud83d\\ude00\","
                    "\"author\":{\"id\":3,\"name\":\"\\u00c5sa\",\"tags\":[1,2.5,true,false,"
                    "null,\"x\",[],{}]},\"empty\":\"\",\"neg\":-17,\"real\":-0.125}");
}

/* Decoding must fail, leave ev cleared and say why. */
static void assert_rejects(const char *p, size_t n)
{
    chorus_event ev;
    memset(&ev, 0x5a, sizeof ev);
    char err[128] = "";
    assert_int_equal(event_decode_msgpack(p, n, &ev, err, sizeof err), CHORUS_ERR);
    assert_true(err[0] != '\0');
    assert_null(ev.data);
    assert_null(ev.users);
    assert_int_equal(ev.n_users, 0);
}

/* A packer writing into a msgpack_sbuffer, for hand-made (hostile) encodings. */
typedef struct mk {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} mk;

static void mk_init(mk *m)
{
    msgpack_sbuffer_init(&m->sb);
    msgpack_packer_init(&m->pk, &m->sb, msgpack_sbuffer_write);
}

static void mk_str(mk *m, const char *s)
{
    msgpack_pack_str_with_body(&m->pk, s, strlen(s));
}

/* Packs the keys of a minimal valid envelope (id, type) into a map that will have
 * 2 + extra entries. */
static void mk_envelope(mk *m, size_t extra)
{
    msgpack_pack_map(&m->pk, 2 + extra);
    mk_str(m, "id");
    msgpack_pack_int64(&m->pk, 1);
    mk_str(m, "type");
    mk_str(m, "typing");
}

static uint64_t rng_state = 0x0123456789abcdefULL;

static uint64_t rng(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

/* ---- round trips ------------------------------------------------------------------ */

/* A channel event with nested, unicode data survives msgpack and JSON. */
static void test_round_trip_channel(void **state)
{
    (void)state;
    chorus_event ev;
    channel_event(&ev);
    round_trip(&ev);
    event_clear(&ev);
    assert_null(ev.data);
}

/* A user event carries users and neither ch nor seq, in msgpack and in JSON. */
static void test_round_trip_user(void **state)
{
    (void)state;
    chorus_event ev = {0};
    ev.id = 77;
    strcpy(ev.type, "channel.joined");
    ev.workspace_id = 3;
    ev.n_users = 3;
    ev.users = malloc(3 * sizeof(int64_t));
    ev.users[0] = 10;
    ev.users[1] = 20;
    ev.users[2] = 30;
    ev.data = load("{\"channel\":{\"id\":42,\"name\":\"general\"}}");
    round_trip(&ev);

    buf b;
    buf_init(&b, 0);
    assert_int_equal(event_encode_msgpack(&ev, &b), CHORUS_OK);
    assert_true(mp_has_key(b.data, b.len, "users"));
    assert_false(mp_has_key(b.data, b.len, "ch"));
    assert_false(mp_has_key(b.data, b.len, "seq"));
    buf_free(&b);

    json_t *j = event_to_json(&ev);
    assert_int_equal(json_array_size(json_object_get(j, "users")), 3);
    assert_null(json_object_get(j, "ch"));
    assert_null(json_object_get(j, "seq"));
    json_decref(j);
    event_clear(&ev);
}

/* An ephemeral event has a channel but no seq; no users and no data at all is fine. */
static void test_round_trip_ephemeral(void **state)
{
    (void)state;
    chorus_event ev = {0};
    ev.id = 5;
    strcpy(ev.type, "typing");
    ev.workspace_id = 1;
    ev.channel_id = 9;
    round_trip(&ev);

    buf b;
    buf_init(&b, 0);
    assert_int_equal(event_encode_msgpack(&ev, &b), CHORUS_OK);
    assert_true(mp_has_key(b.data, b.len, "ch"));
    assert_false(mp_has_key(b.data, b.len, "seq"));
    assert_false(mp_has_key(b.data, b.len, "users"));
    assert_true(mp_has_key(b.data, b.len, "d"));
    chorus_event back;
    assert_int_equal(event_decode_msgpack(b.data, b.len, &back, NULL, 0), CHORUS_OK);
    assert_true(json_is_object(back.data)); /* {} on the wire */
    event_clear(&back);
    buf_free(&b);
}

/* INT64_MIN and INT64_MAX survive in every integer field and inside data. */
static void test_large_ints(void **state)
{
    (void)state;
    chorus_event ev = {0};
    ev.id = INT64_MAX;
    strcpy(ev.type, "x.y");
    ev.workspace_id = INT64_MIN;
    ev.channel_id = INT64_MAX;
    ev.seq = INT64_MIN;
    ev.created_at_us = INT64_MAX;
    ev.n_users = 4;
    ev.users = malloc(4 * sizeof(int64_t));
    ev.users[0] = INT64_MIN;
    ev.users[1] = INT64_MAX;
    ev.users[2] = 0;
    ev.users[3] = -1;
    ev.data = json_pack("{s:I,s:I,s:I,s:I,s:[I,I]}", "max", (json_int_t)INT64_MAX, "min",
                        (json_int_t)INT64_MIN, "u32", (json_int_t)4294967296LL, "m1",
                        (json_int_t)-1, "a", (json_int_t)INT64_MIN + 1,
                        (json_int_t)INT64_MAX - 1);
    assert_non_null(ev.data);
    round_trip(&ev);

    /* integers stay integers, reals stay reals (1.0 is not 1) */
    json_t *mixed = load("[1, 1.0, -0.5, 1e300, 0]");
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    assert_int_equal(msgpack_pack_json(&pk, mixed), CHORUS_OK);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&u, sb.data, sb.size, &off), MSGPACK_UNPACK_SUCCESS);
    json_t *back = json_from_msgpack(&u.data);
    assert_non_null(back);
    assert_true(json_equal(mixed, back));
    assert_true(json_is_integer(json_array_get(back, 0)));
    assert_true(json_is_real(json_array_get(back, 1)));
    json_decref(back);
    json_decref(mixed);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
    event_clear(&ev);
}

/* The client frame: t, ws, d always; ch and seq only when non-zero. */
static void test_frame_json(void **state)
{
    (void)state;
    chorus_event ev;
    channel_event(&ev);
    json_t *f = event_to_frame_json(&ev);
    assert_non_null(f);
    assert_string_equal(json_string_value(json_object_get(f, "t")), "message.created");
    assert_int_equal(json_integer_value(json_object_get(f, "ws")), 7);
    assert_int_equal(json_integer_value(json_object_get(f, "ch")), 42);
    assert_int_equal(json_integer_value(json_object_get(f, "seq")), 1234);
    assert_true(json_equal(json_object_get(f, "d"), ev.data));
    assert_int_equal(json_object_size(f), 5);
    json_decref(f);

    ev.seq = 0; /* ephemeral */
    f = event_to_frame_json(&ev);
    assert_non_null(json_object_get(f, "ch"));
    assert_null(json_object_get(f, "seq"));
    json_decref(f);

    ev.channel_id = 0; /* user event */
    json_decref(ev.data);
    ev.data = NULL;
    f = event_to_frame_json(&ev);
    assert_null(json_object_get(f, "ch"));
    assert_null(json_object_get(f, "seq"));
    assert_true(json_is_object(json_object_get(f, "d")));
    assert_int_equal(json_object_size(json_object_get(f, "d")), 0);
    assert_int_equal(json_object_size(f), 3);
    json_decref(f);
    event_clear(&ev);
}

/* ---- bounds and bad events ----------------------------------------------------------- */

/* Past the buffer's bound the encoder says CHORUS_AGAIN and leaves the buffer as it was. */
static void test_buf_bound(void **state)
{
    (void)state;
    chorus_event ev;
    channel_event(&ev);
    buf full;
    buf_init(&full, 0);
    assert_int_equal(event_encode_msgpack(&ev, &full), CHORUS_OK);

    buf b;
    buf_init(&b, 10);
    assert_int_equal(event_encode_msgpack(&ev, &b), CHORUS_AGAIN);
    assert_int_equal(b.len, 0);
    buf_free(&b);

    buf_init(&b, full.len + 3);
    assert_int_equal(buf_append(&b, "abcd", 4), CHORUS_OK);
    assert_int_equal(event_encode_msgpack(&ev, &b), CHORUS_AGAIN);
    assert_int_equal(b.len, 4);
    assert_string_equal(b.data, "abcd");
    buf_free(&b);

    buf_init(&b, full.len); /* exactly enough */
    assert_int_equal(event_encode_msgpack(&ev, &b), CHORUS_OK);
    assert_int_equal(b.len, full.len);
    assert_memory_equal(b.data, full.data, full.len);
    buf_free(&b);
    buf_free(&full);
    event_clear(&ev);
}

/* Events that cannot be represented are refused by the encoders. */
static void test_encode_refuses(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 0);
    chorus_event ev = {0};
    ev.id = 1;
    assert_int_equal(event_encode_msgpack(&ev, &b), CHORUS_ERR); /* empty type */
    strcpy(ev.type, "has space");
    assert_int_equal(event_encode_msgpack(&ev, &b), CHORUS_ERR);
    assert_null(event_to_frame_json(&ev));
    strcpy(ev.type, "ok");
    ev.data = json_array();
    assert_int_equal(event_encode_msgpack(&ev, &b), CHORUS_ERR); /* d must be an object */
    json_decref(ev.data);
    ev.data = NULL;
    ev.n_users = EVENT_MAX_USERS + 1;
    ev.users = calloc(ev.n_users, sizeof(int64_t));
    assert_int_equal(event_encode_msgpack(&ev, &b), CHORUS_ERR);
    ev.n_users = EVENT_MAX_USERS;
    assert_int_equal(event_encode_msgpack(&ev, &b), CHORUS_OK);
    assert_int_equal(b.len > 0, 1);
    event_clear(&ev);
    buf_free(&b);
}

/* ---- hostile input ------------------------------------------------------------------- */

/* Every proper prefix of a valid encoding is rejected cleanly. */
static void test_truncation(void **state)
{
    (void)state;
    chorus_event ev;
    channel_event(&ev);
    ev.n_users = 2;
    ev.users = malloc(2 * sizeof(int64_t));
    ev.users[0] = 1;
    ev.users[1] = INT64_MAX;
    buf b;
    buf_init(&b, 0);
    assert_int_equal(event_encode_msgpack(&ev, &b), CHORUS_OK);
    for (size_t n = 0; n < b.len; n++) {
        /* a private copy, so ASan sees any read past the prefix */
        char *p = malloc(n ? n : 1);
        memcpy(p, b.data, n);
        assert_rejects(p, n);
        free(p);
    }
    /* and one trailing byte too many */
    assert_int_equal(buf_append(&b, "\xc0", 1), CHORUS_OK);
    assert_rejects(b.data, b.len);
    buf_free(&b);
    event_clear(&ev);
}

static void fuzz_one(const char *p, size_t n)
{
    chorus_event ev;
    char err[128];
    char *copy = malloc(n ? n : 1);
    memcpy(copy, p, n);
    if (event_decode_msgpack(copy, n, &ev, err, sizeof err) == CHORUS_OK) {
        /* whatever was accepted must encode again */
        buf b;
        buf_init(&b, 0);
        assert_int_equal(event_encode_msgpack(&ev, &b), CHORUS_OK);
        buf_free(&b);
        json_t *f = event_to_frame_json(&ev);
        assert_non_null(f);
        json_decref(f);
        event_clear(&ev);
    } else {
        assert_null(ev.data);
        assert_null(ev.users);
    }
    free(copy);
}

/* 20000 random buffers (fixed seed) never crash the decoder; half start like a map. */
static void test_fuzz_random(void **state)
{
    (void)state;
    rng_state = 0x0123456789abcdefULL;
    unsigned char p[512];
    for (int i = 0; i < 20000; i++) {
        size_t n = (size_t)(rng() % sizeof p);
        for (size_t k = 0; k < n; k++)
            p[k] = (unsigned char)rng();
        if (n > 0 && (i & 1))
            p[0] = (unsigned char)(0x80 | (rng() & 0x0f)); /* fixmap */
        fuzz_one((const char *)p, n);
    }
}

/* 20000 mutations (byte flips, truncations, insertions) of valid encodings. */
static void test_fuzz_mutations(void **state)
{
    (void)state;
    rng_state = 0xfeedfacecafebeefULL;
    chorus_event ev;
    channel_event(&ev);
    ev.n_users = 3;
    ev.users = calloc(3, sizeof(int64_t));
    ev.users[1] = 99;
    buf b;
    buf_init(&b, 0);
    assert_int_equal(event_encode_msgpack(&ev, &b), CHORUS_OK);
    char *m = malloc(b.len + 16);
    int accepted = 0;
    for (int i = 0; i < 20000; i++) {
        size_t n = b.len;
        memcpy(m, b.data, n);
        int edits = 1 + (int)(rng() % 4);
        for (int e = 0; e < edits; e++) {
            size_t at = (size_t)(rng() % n);
            switch (rng() % 4) {
            case 0: m[at] = (char)rng(); break;
            case 1: m[at] ^= (char)(1u << (rng() % 8)); break;
            case 2: m[at] = (char)(0xc0 | (rng() & 0x3f)); break; /* type bytes */
            default:
                if (n < b.len + 16) { /* insert */
                    memmove(m + at + 1, m + at, n - at);
                    m[at] = (char)rng();
                    n++;
                }
            }
        }
        if (rng() % 8 == 0)
            n = (size_t)(rng() % (n + 1));
        chorus_event out;
        if (event_decode_msgpack(m, n, &out, NULL, 0) == CHORUS_OK) {
            accepted++;
            event_clear(&out);
        }
        fuzz_one(m, n);
    }
    assert_true(accepted > 0); /* some mutations only touch data: the fuzz went deep */
    free(m);
    buf_free(&b);
    event_clear(&ev);
}

/* Deeply nested arrays are refused before they reach the stack, anywhere they appear. */
static void test_depth_bomb(void **state)
{
    (void)state;
    size_t n = 100000;
    char *p = malloc(n + 64);
    memset(p, 0x91, n); /* [[[[...]]]] */
    p[n] = (char)0xc0;
    assert_rejects(p, n + 1);

    /* as the value of an unknown key, and inside d */
    mk m;
    const char *keys[] = {"zz", "d"};
    for (int k = 0; k < 2; k++) {
        mk_init(&m);
        mk_envelope(&m, 1);
        mk_str(&m, keys[k]);
        for (int i = 0; i < 40; i++)
            msgpack_pack_map(&m.pk, 1), mk_str(&m, "a");
        msgpack_pack_nil(&m.pk);
        assert_rejects(m.sb.data, m.sb.size);
        msgpack_sbuffer_destroy(&m.sb);
    }
    free(p);

    /* the documented bound: d may nest 31 levels (the envelope is the 32nd) */
    for (int depth = 30; depth <= 33; depth++) {
        json_t *root = json_object(), *cur = root;
        for (int i = 1; i < depth; i++) {
            json_t *next = json_object();
            json_object_set_new(cur, "k", next);
            cur = next;
        }
        chorus_event ev = {.id = 1, .data = root};
        strcpy(ev.type, "deep");
        buf b;
        buf_init(&b, 0);
        int rc = event_encode_msgpack(&ev, &b);
        if (depth <= 31) {
            assert_int_equal(rc, CHORUS_OK);
            round_trip(&ev);
        } else {
            assert_int_equal(rc, CHORUS_ERR);
            assert_int_equal(b.len, 0);
            json_t *j = event_to_json(&ev);
            chorus_event back;
            assert_int_equal(event_from_json(j, &back, NULL, 0), CHORUS_ERR);
            json_decref(j);
        }
        buf_free(&b);
        event_clear(&ev);
    }

    /* generic conversions: 64 levels fine, 65 refused, both directions */
    for (int depth = 64; depth <= 65; depth++) {
        json_t *root = json_array(), *cur = root;
        for (int i = 1; i < depth; i++) {
            json_t *next = json_array();
            json_array_append_new(cur, next);
            cur = next;
        }
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        assert_int_equal(msgpack_pack_json(&pk, root), depth <= 64 ? CHORUS_OK : CHORUS_ERR);
        msgpack_sbuffer_destroy(&sb);
        json_decref(root);

        msgpack_object nodes[66];
        for (int i = 0; i < depth; i++) {
            nodes[i].type = MSGPACK_OBJECT_ARRAY;
            nodes[i].via.array.size = i + 1 < depth ? 1 : 0;
            nodes[i].via.array.ptr = &nodes[i + 1];
        }
        json_t *j = json_from_msgpack(&nodes[0]);
        if (depth <= 64)
            assert_non_null(j);
        else
            assert_null(j);
        json_decref(j);
    }
}

/* Malformed envelopes: each is refused with a reason, never half-filled. */
static void test_hostile_envelopes(void **state)
{
    (void)state;
    mk m;

    /* an array announcing 2^32-1 elements in 5 bytes (msgpack-c would allocate ~100 GB) */
    assert_rejects("\xdd\xff\xff\xff\xff", 5);
    assert_rejects("\xdf\xff\xff\xff\xff", 5);
    assert_rejects("\xc1", 1);
    assert_rejects("\x93\x01\x02\x03", 4); /* not a map */

    /* missing id, missing type */
    mk_init(&m);
    msgpack_pack_map(&m.pk, 1);
    mk_str(&m, "type");
    mk_str(&m, "typing");
    assert_rejects(m.sb.data, m.sb.size);
    msgpack_sbuffer_destroy(&m.sb);
    mk_init(&m);
    msgpack_pack_map(&m.pk, 1);
    mk_str(&m, "id");
    msgpack_pack_int64(&m.pk, 1);
    assert_rejects(m.sb.data, m.sb.size);
    msgpack_sbuffer_destroy(&m.sb);

    /* a non-string key */
    mk_init(&m);
    mk_envelope(&m, 1);
    msgpack_pack_int64(&m.pk, 5);
    msgpack_pack_int64(&m.pk, 5);
    assert_rejects(m.sb.data, m.sb.size);
    msgpack_sbuffer_destroy(&m.sb);

    /* a duplicate key */
    mk_init(&m);
    mk_envelope(&m, 1);
    mk_str(&m, "id");
    msgpack_pack_int64(&m.pk, 2);
    assert_rejects(m.sb.data, m.sb.size);
    msgpack_sbuffer_destroy(&m.sb);

    /* type: too long, not ASCII, not a string */
    const char *bad_types[] = {"0123456789012345678901234567890123", "a b", "\xc3\xa9t\xc3\xa9"};
    for (int i = 0; i < 3; i++) {
        mk_init(&m);
        msgpack_pack_map(&m.pk, 2);
        mk_str(&m, "id");
        msgpack_pack_int64(&m.pk, 1);
        mk_str(&m, "type");
        mk_str(&m, bad_types[i]);
        assert_rejects(m.sb.data, m.sb.size);
        msgpack_sbuffer_destroy(&m.sb);
    }
    mk_init(&m);
    msgpack_pack_map(&m.pk, 2);
    mk_str(&m, "id");
    msgpack_pack_int64(&m.pk, 1);
    mk_str(&m, "type");
    msgpack_pack_int64(&m.pk, 1);
    assert_rejects(m.sb.data, m.sb.size);
    msgpack_sbuffer_destroy(&m.sb);

    /* the longest type is EVENT_TYPE_MAX - 1 bytes; bin is accepted as a string */
    mk_init(&m);
    msgpack_pack_map(&m.pk, 2);
    mk_str(&m, "id");
    msgpack_pack_int64(&m.pk, 1);
    mk_str(&m, "type");
    msgpack_pack_bin_with_body(&m.pk, "0123456789012345678901234567890", 31);
    chorus_event ev;
    assert_int_equal(event_decode_msgpack(m.sb.data, m.sb.size, &ev, NULL, 0), CHORUS_OK);
    assert_string_equal(ev.type, "0123456789012345678901234567890");
    event_clear(&ev);
    msgpack_sbuffer_destroy(&m.sb);

    /* id above INT64_MAX, id as a real, ws as a string */
    mk_init(&m);
    msgpack_pack_map(&m.pk, 2);
    mk_str(&m, "id");
    msgpack_pack_uint64(&m.pk, (uint64_t)INT64_MAX + 1);
    mk_str(&m, "type");
    mk_str(&m, "t");
    assert_rejects(m.sb.data, m.sb.size);
    msgpack_sbuffer_destroy(&m.sb);
    mk_init(&m);
    msgpack_pack_map(&m.pk, 2);
    mk_str(&m, "id");
    msgpack_pack_double(&m.pk, 1.0);
    mk_str(&m, "type");
    mk_str(&m, "t");
    assert_rejects(m.sb.data, m.sb.size);
    msgpack_sbuffer_destroy(&m.sb);
    mk_init(&m);
    mk_envelope(&m, 1);
    mk_str(&m, "ws");
    mk_str(&m, "7");
    assert_rejects(m.sb.data, m.sb.size);
    msgpack_sbuffer_destroy(&m.sb);

    /* users: too many, not ints, not an array; exactly EVENT_MAX_USERS is fine */
    for (int variant = 0; variant < 4; variant++) {
        mk_init(&m);
        mk_envelope(&m, 1);
        mk_str(&m, "users");
        if (variant == 2) {
            mk_str(&m, "1,2");
        } else {
            size_t n = variant == 0 ? EVENT_MAX_USERS + 1 : variant == 1 ? 3 : EVENT_MAX_USERS;
            msgpack_pack_array(&m.pk, n);
            for (size_t i = 0; i < n; i++) {
                if (variant == 1 && i == 2)
                    mk_str(&m, "3");
                else
                    msgpack_pack_int64(&m.pk, (int64_t)i);
            }
        }
        if (variant < 3) {
            assert_rejects(m.sb.data, m.sb.size);
        } else {
            assert_int_equal(event_decode_msgpack(m.sb.data, m.sb.size, &ev, NULL, 0),
                             CHORUS_OK);
            assert_int_equal(ev.n_users, EVENT_MAX_USERS);
            assert_true(ev.users[EVENT_MAX_USERS - 1] == EVENT_MAX_USERS - 1);
            event_clear(&ev);
        }
        msgpack_sbuffer_destroy(&m.sb);
    }

    /* d: not a map; holding ext, uint64 > INT64_MAX, invalid UTF-8 or a non-string key */
    for (int variant = 0; variant < 5; variant++) {
        mk_init(&m);
        mk_envelope(&m, 1);
        mk_str(&m, "d");
        if (variant == 0) {
            msgpack_pack_array(&m.pk, 0);
        } else {
            msgpack_pack_map(&m.pk, 1);
            if (variant == 4) {
                msgpack_pack_int64(&m.pk, 1);
            } else {
                mk_str(&m, "v");
                if (variant == 1)
                    msgpack_pack_ext_with_body(&m.pk, "ab", 2, 7);
                else if (variant == 2)
                    msgpack_pack_uint64(&m.pk, UINT64_MAX);
                else
                    msgpack_pack_str_with_body(&m.pk, "\xff\xfe", 2);
            }
            if (variant == 4)
                msgpack_pack_nil(&m.pk);
        }
        assert_rejects(m.sb.data, m.sb.size);
        msgpack_sbuffer_destroy(&m.sb);
    }

    /* unknown keys (of any type, ext included) are ignored; d nil means no data */
    mk_init(&m);
    mk_envelope(&m, 3);
    mk_str(&m, "future");
    msgpack_pack_ext_with_body(&m.pk, "abc", 3, 1);
    mk_str(&m, "big");
    msgpack_pack_uint64(&m.pk, UINT64_MAX);
    mk_str(&m, "d");
    msgpack_pack_nil(&m.pk);
    assert_int_equal(event_decode_msgpack(m.sb.data, m.sb.size, &ev, NULL, 0), CHORUS_OK);
    assert_int_equal(ev.id, 1);
    assert_string_equal(ev.type, "typing");
    assert_null(ev.data);
    event_clear(&ev);
    msgpack_sbuffer_destroy(&m.sb);

    /* floats, bin strings and negative numbers inside d */
    mk_init(&m);
    mk_envelope(&m, 1);
    mk_str(&m, "d");
    msgpack_pack_map(&m.pk, 3);
    mk_str(&m, "f");
    msgpack_pack_float(&m.pk, 0.5f);
    msgpack_pack_bin_with_body(&m.pk, "b", 1);
    msgpack_pack_bin_with_body(&m.pk, "bytes", 5);
    mk_str(&m, "n");
    msgpack_pack_int8(&m.pk, -3);
    assert_int_equal(event_decode_msgpack(m.sb.data, m.sb.size, &ev, NULL, 0), CHORUS_OK);
    json_t *want = load("{\"f\":0.5,\"b\":\"bytes\",\"n\":-3}");
    assert_true(json_equal(want, ev.data));
    json_decref(want);
    event_clear(&ev);
    msgpack_sbuffer_destroy(&m.sb);
}

/* event_from_json applies the same rules as the msgpack decoder. */
static void test_from_json_errors(void **state)
{
    (void)state;
    const char *bad[] = {
        "[]",
        "{\"type\":\"t\"}",
        "{\"id\":1}",
        "{\"id\":\"1\",\"type\":\"t\"}",
        "{\"id\":1.5,\"type\":\"t\"}",
        "{\"id\":1,\"type\":\"\"}",
        "{\"id\":1,\"type\":\"t\",\"ws\":true}",
        "{\"id\":1,\"type\":\"t\",\"users\":{}}",
        "{\"id\":1,\"type\":\"t\",\"users\":[1,\"2\"]}",
        "{\"id\":1,\"type\":\"t\",\"d\":[1]}",
        "{\"id\":1,\"type\":\"t\",\"d\":\"x\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *j = load(bad[i]);
        chorus_event ev;
        char err[128] = "";
        assert_int_equal(event_from_json(j, &ev, err, sizeof err), CHORUS_ERR);
        assert_true(err[0] != '\0');
        assert_null(ev.data);
        assert_null(ev.users);
        json_decref(j);
    }
    json_t *j = load("{\"id\":1,\"type\":\"t\",\"d\":null,\"users\":[],\"extra\":[1,2]}");
    chorus_event ev;
    assert_int_equal(event_from_json(j, &ev, NULL, 0), CHORUS_OK);
    assert_null(ev.data);
    assert_int_equal(ev.n_users, 0);
    json_decref(j);
    event_clear(&ev);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_channel),
        cmocka_unit_test(test_round_trip_user),
        cmocka_unit_test(test_round_trip_ephemeral),
        cmocka_unit_test(test_large_ints),
        cmocka_unit_test(test_frame_json),
        cmocka_unit_test(test_buf_bound),
        cmocka_unit_test(test_encode_refuses),
        cmocka_unit_test(test_truncation),
        cmocka_unit_test(test_fuzz_random),
        cmocka_unit_test(test_fuzz_mutations),
        cmocka_unit_test(test_depth_bomb),
        cmocka_unit_test(test_hostile_envelopes),
        cmocka_unit_test(test_from_json_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
