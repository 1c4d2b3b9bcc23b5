/* test_check_streams.c - `chorus check-streams`, which reads every channel partition
 * stream and checks that each channel's seqs are whole and in order: the load test runs
 * it after a run to tell a hole on the streams from one in the WSS nodes. Streams are
 * written here by hand in a Redis db of the test's own. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "api.h"
#include "chorus/buf.h"
#include "chorus/event.h"
#include "chorus/rclient.h"

static api_server S;
static redisContext *rc;

static int group_setup(void **state)
{
    (void)state;
    api_db_create(&S, "checkstreams");
    char host[128];
    int port, db;
    assert_int_equal(rclient_parse_url(S.redis_url, host, sizeof host, &port, &db), 0);
    rc = redisConnect(host, port);
    assert_true(rc && !rc->err);
    freeReplyObject(redisCommand(rc, "SELECT %d", db));
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    redisFree(rc);
    api_db_drop(&S);
    return 0;
}

/* Appends channel ch's event seq to partition p's stream, as the outbox worker does. */
static void xadd(int p, long long ch, long long seq)
{
    chorus_event ev = {.id = ch * 1000 + seq, .workspace_id = 1, .channel_id = ch, .seq = seq};
    snprintf(ev.type, sizeof ev.type, "message.created");
    buf b;
    buf_init(&b, 0);
    assert_int_equal(event_encode_msgpack(&ev, &b), 0);
    redisReply *r = redisCommand(rc, "XADD chorus:ch:%d * e %b", p, b.data, b.len);
    assert_true(r && r->type == REDIS_REPLY_STRING);
    freeReplyObject(r);
    buf_free(&b);
}

/* Runs check-streams over 4 partitions; its exit status, its output in *out. */
static int check(char **out)
{
    static char env_redis[300];
    snprintf(env_redis, sizeof env_redis, "CHORUS_REDIS_URL=%s", S.redis_url);
    const char *env[] = {env_redis, "CHORUS_PARTITIONS=4", "CHORUS_LOG_LEVEL=warn", NULL};
    const char *args[] = {"check-streams", NULL};
    test_proc p;
    assert_int_equal(test_proc_start(&p, args, env), 0);
    int status = test_proc_wait(&p, 30000);
    FILE *f = fopen(p.log_path, "r");
    assert_non_null(f);
    *out = calloc(1, 65536);
    size_t n = fread(*out, 1, 65535, f);
    (*out)[n] = '\0';
    fclose(f);
    unlink(p.log_path);
    return status;
}

/* check-streams must exit with want and print every one of needles (NULL-ended). */
static void expect_verdict(int want, const char *const *needles)
{
    char *out;
    int status = check(&out);
    print_message("%s", out);
    assert_int_equal(status, want);
    for (int i = 0; needles[i]; i++)
        if (!strstr(out, needles[i]))
            fail_msg("check-streams did not say \"%s\"", needles[i]);
    free(out);
}

static void reset(void)
{
    freeReplyObject(redisCommand(rc, "FLUSHDB"));
}

/* Whole runs pass, across pages (2,500 entries on one partition), with repeats (at
 * least once) and a channel whose head was trimmed. */
static void test_whole_streams_pass(void **state)
{
    (void)state;
    reset();
    for (long long s = 1; s <= 2500; s++)
        xadd(1, 5, s);
    xadd(1, 5, 2499); /* a repeat */
    xadd(2, 6, 7);    /* trimmed: starts at 7 */
    xadd(2, 6, 8);
    const char *says[] = {"2503 entries of 2 channels",
                          "0 gaps, 0 out of order, 1 repeats, 1 channels trimmed", NULL};
    expect_verdict(0, says);
}

/* A gap, and a seq that comes after the one past it, are both found and named. */
static void test_gap_and_disorder_fail(void **state)
{
    (void)state;
    reset();
    xadd(3, 7, 1);
    xadd(3, 7, 3); /* 2 is missing here */
    xadd(3, 7, 2); /* ...and comes late */
    xadd(3, 7, 4);
    const char *says[] = {"channel 7: seq 3", "(a gap)", "channel 7: seq 2", "(out of order)",
                          NULL};
    expect_verdict(1, says);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole_streams_pass),
        cmocka_unit_test(test_gap_and_disorder_fail),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
