/* test_outbox_row.c - the pure parts of the outbox worker (outbox_row.h): a row as a
 * stream entry and its target streams, the bigint[] parser, partition ownership. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "chorus/event.h"
#include "chorus/status.h"
#include "outbox_row.h"

enum { PARTS = 16, MAXP = PARTS * 2 + 1 };

static void assert_key(int stream_part, const char *want)
{
    char key[OUTBOX_KEY_MAX];
    outbox_stream_key(stream_part, key);
    assert_string_equal(key, want);
}

/* Encodes row (which must be valid) into out; returns the number of target streams. */
static size_t encode_ok(const outbox_row *row, buf *out, int *parts)
{
    size_t n = 0;
    char err[128] = "";
    buf_init(out, 0);
    if (outbox_row_encode(row, PARTS, out, parts, MAXP, &n, err, sizeof err) != CHORUS_OK)
        fail_msg("a valid row was refused: %s", err);
    return n;
}

static outbox_row channel_row(void)
{
    return (outbox_row){.id = "41", .stream = "ch", .event_type = "member.left",
                        .workspace_id = "3", .channel_id = "21", .seq = "7",
                        .payload = "{\"channel_id\":21,\"user_id\":5}",
                        .user_ids = "{5,37,21}", .created_us = "1795456148425000"};
}

/* A channel event aimed at users goes to its channel's stream first, then to the user
 * stream of each distinct user partition; the envelope carries every field. */
static void test_channel_event_with_users(void **state)
{
    (void)state;
    outbox_row row = channel_row();
    buf out;
    int parts[MAXP];
    /* 21 % 16 = 5 (ch); users 5 and 37 share u:5, 21 is u:5 too. */
    assert_int_equal(encode_ok(&row, &out, parts), 2);
    assert_key(parts[0], "chorus:ch:5");
    assert_key(parts[1], "chorus:u:5");

    chorus_event ev;
    char err[128];
    assert_int_equal(event_decode_msgpack(out.data, out.len, &ev, err, sizeof err), CHORUS_OK);
    assert_int_equal(ev.id, 41);
    assert_string_equal(ev.type, "member.left");
    assert_int_equal(ev.workspace_id, 3);
    assert_int_equal(ev.channel_id, 21);
    assert_int_equal(ev.seq, 7);
    assert_int_equal(ev.n_users, 3);
    assert_int_equal(ev.users[1], 37);
    assert_int_equal(ev.created_at_us, 1795456148425000LL);
    assert_int_equal(json_integer_value(json_object_get(ev.data, "user_id")), 5);
    event_clear(&ev);
    buf_free(&out);
}

/* A user event has no ch/seq on the wire and goes to each distinct user partition. */
static void test_user_event(void **state)
{
    (void)state;
    outbox_row row = {.id = "9", .stream = "u", .event_type = "read.updated",
                      .workspace_id = "1", .channel_id = "4", .seq = "",
                      .payload = "{\"channel_id\":4,\"last_read_seq\":3}",
                      .user_ids = "{2,18,3}", .created_us = "1"};
    buf out;
    int parts[MAXP];
    assert_int_equal(encode_ok(&row, &out, parts), 2); /* 2 and 18 share u:2; 3 is u:3 */
    assert_key(parts[0], "chorus:u:2");
    assert_key(parts[1], "chorus:u:3");
    chorus_event ev;
    char err[128];
    assert_int_equal(event_decode_msgpack(out.data, out.len, &ev, err, sizeof err), CHORUS_OK);
    assert_int_equal(ev.channel_id, 0);
    assert_int_equal(ev.seq, 0);
    event_clear(&ev);
    buf_free(&out);
}

/* Rows the table's checks should have refused are refused here too, with a reason, and
 * leave the output buffer as it was. */
static void test_bad_rows(void **state)
{
    (void)state;
    struct {
        const char *what;
        outbox_row row;
    } cases[] = {
        {"stream", channel_row()},  {"payload", channel_row()}, {"payload array", channel_row()},
        {"seq", channel_row()},     {"users", channel_row()},   {"user event without users", channel_row()},
        {"id", channel_row()},
    };
    cases[0].row.stream = "x";
    cases[1].row.payload = "{\"a\":";
    cases[2].row.payload = "[1]";
    cases[3].row.seq = "";
    cases[4].row.user_ids = "{1,NULL}";
    cases[5].row.stream = "u";
    cases[5].row.seq = "";
    cases[5].row.user_ids = "";
    cases[6].row.id = "12x";
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        buf out;
        buf_init(&out, 0);
        int parts[MAXP];
        size_t n = 0;
        char err[128] = "";
        if (outbox_row_encode(&cases[i].row, PARTS, &out, parts, MAXP, &n, err, sizeof err) !=
            CHORUS_ERR)
            fail_msg("bad %s was accepted", cases[i].what);
        assert_true(err[0] != '\0');
        assert_int_equal(out.len, 0);
        buf_free(&out);
    }
}

static void test_parse_bigint_array(void **state)
{
    (void)state;
    int64_t v[4];
    assert_int_equal(outbox_parse_bigint_array("{}", v, 4), 0);
    assert_int_equal(outbox_parse_bigint_array("{7}", v, 4), 1);
    assert_int_equal(v[0], 7);
    assert_int_equal(outbox_parse_bigint_array("{1,-2,9223372036854775807}", v, 4), 3);
    assert_int_equal(v[1], -2);
    assert_int_equal(v[2], INT64_MAX);
    const char *bad[] = {"", "{", "}", "{1,}", "{,1}", "{1 ,2}", "{ 1}", "{+1}", "{NULL}",
                         "{{1}}", "{1}x", "{9223372036854775808}", "{1,2,3,4,5}", "1,2"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (outbox_parse_bigint_array(bad[i], v, 4) != -1)
            fail_msg("'%s' was parsed", bad[i]);
    assert_int_equal(outbox_parse_bigint_array(NULL, v, 4), -1);
}

/* Every partition has exactly one owner among the live workers, whatever order the ids
 * come in, and a worker not in the list owns nothing. */
static void test_assign(void **state)
{
    (void)state;
    const char *live[] = {"w-c", "w-a", "w-b"};
    int owners[PARTS] = {0};
    int out[PARTS];
    for (int i = 0; i < 3; i++) {
        int n = outbox_assign(live, 3, live[i], PARTS, out);
        assert_true(n == 5 || n == 6);
        for (int k = 0; k < n; k++) {
            assert_true(out[k] >= 0 && out[k] < PARTS);
            assert_true(k == 0 || out[k] > out[k - 1]);
            owners[out[k]]++;
        }
    }
    for (int p = 0; p < PARTS; p++)
        assert_int_equal(owners[p], 1);
    /* Rank by sorted id: w-a is rank 0 and owns partition 0. */
    assert_int_equal(outbox_assign(live, 3, "w-a", PARTS, out), 6);
    assert_int_equal(out[0], 0);
    assert_int_equal(outbox_assign(live, 3, "w-z", PARTS, out), 0);
    const char *one[] = {"solo"};
    assert_int_equal(outbox_assign(one, 1, "solo", PARTS, out), PARTS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_channel_event_with_users),
        cmocka_unit_test(test_user_event),
        cmocka_unit_test(test_bad_rows),
        cmocka_unit_test(test_parse_bigint_array),
        cmocka_unit_test(test_assign),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
