/* test_load_frame.c - what the harness reads off server frames (loadtest/load_frame.c),
 * in both protocols: message.created's channel, seq and send time, "resumed", and the
 * hello's heartbeat_ms, which paces the sessions' pings. */
#include <msgpack.h>
#include <string.h>

#include "testutil.h"

#include "load.h"

static frame_event read_text(const char *s)
{
    char copy[512];
    snprintf(copy, sizeof copy, "%s", s);
    return frame_read(false, copy, strlen(copy));
}

static void test_json_frames(void **state)
{
    (void)state;
    frame_event ev = read_text("{\"t\":\"hello\",\"node\":\"n1\",\"session\":\"s\","
                               "\"heartbeat_ms\":30000}");
    assert_int_equal(ev.kind, FRAME_HELLO);
    assert_int_equal(ev.seq, 30000);
    ev = read_text("{\"t\":\"message.created\",\"ws\":1,\"ch\":17,\"seq\":42,"
                   "\"d\":{\"id\":9,\"text\":\"1795494202305123 hello\"}}");
    assert_int_equal(ev.kind, FRAME_MESSAGE);
    assert_int_equal(ev.ch, 17);
    assert_int_equal(ev.seq, 42);
    assert_true(ev.sent_us == 1795494202305123ULL);
    assert_int_equal(read_text("{\"t\":\"resumed\"}").kind, FRAME_RESUMED);
    assert_int_equal(read_text("{\"t\":\"pong\"}").kind, FRAME_OTHER);
}

/* A msgpack map {t: type, <key>: n}. */
static size_t pack(char *out, size_t cap, const char *type, const char *key, long long n)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, key ? 2 : 1);
    msgpack_pack_str_with_body(&pk, "t", 1);
    msgpack_pack_str_with_body(&pk, type, strlen(type));
    if (key) {
        msgpack_pack_str_with_body(&pk, key, strlen(key));
        msgpack_pack_int64(&pk, n);
    }
    size_t len = sb.size < cap ? sb.size : 0;
    memcpy(out, sb.data, len);
    msgpack_sbuffer_destroy(&sb);
    return len;
}

static void test_msgpack_frames(void **state)
{
    (void)state;
    char buf[128];
    size_t n = pack(buf, sizeof buf, "hello", "heartbeat_ms", 45000);
    frame_event ev = frame_read(true, buf, n);
    assert_int_equal(ev.kind, FRAME_HELLO);
    assert_int_equal(ev.seq, 45000);
    n = pack(buf, sizeof buf, "resumed", NULL, 0);
    assert_int_equal(frame_read(true, buf, n).kind, FRAME_RESUMED);
    n = pack(buf, sizeof buf, "pong", NULL, 0);
    assert_int_equal(frame_read(true, buf, n).kind, FRAME_OTHER);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_frames),
        cmocka_unit_test(test_msgpack_frames),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
