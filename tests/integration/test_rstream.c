/* test_rstream.c - the stream reader (rstream.h) against the real Redis of the run.
 * Keys are "rstest:<pid>:..." so parallel tests never meet. A plain blocking hiredis
 * connection plays the outbox worker (XADD); the reader runs on a libev loop that each
 * test spins until what it waits for has happened or a deadline passed.
 * The tests run twice: without a doorbell, and with one (the producer rings it after each
 * entry, and the reader's sweep is a minute away, so an entry that was only found by a
 * sweep would come too late); the doorbell's own tests follow. */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chorus/event.h"
#include "chorus/rclient.h"
#include "chorus/rstream.h"
#include "chorus/status.h"
#include "testloop.h"
#include "testutil.h"

enum { MAX_SEEN = 256 };

typedef struct seen {
    char key[RSTREAM_KEY_MAX];
    long long event_id;
} seen;

static struct ev_loop *loop;
static rclient *control;
static redisContext *producer;
static seen got[MAX_SEEN];
static int ngot;
static rstream *free_me_in_callback;
static int bell_sweep_ms; /* 0: readers without a bell; else their sweep */

static const char *key(const char *name)
{
    static char k[4][RSTREAM_KEY_MAX];
    static int i;
    i = (i + 1) % 4;
    snprintf(k[i], sizeof k[i], "rstest:%d:%s", (int)getpid(), name);
    return k[i];
}

static void on_entry(void *arg, const char *k, const char *id, const chorus_event *ev)
{
    (void)arg;
    (void)id;
    if (ngot < MAX_SEEN) {
        snprintf(got[ngot].key, sizeof got[ngot].key, "%s", k);
        got[ngot].event_id = ev->id;
        ngot++;
    }
    if (free_me_in_callback) {
        rstream_free(free_me_in_callback);
        free_me_in_callback = NULL;
    }
}

/* A bell entry naming the streams names (space-separated short names). */
static void ring(const char *names)
{
    char keys[512] = "";
    char copy[256];
    snprintf(copy, sizeof copy, "%s", names);
    for (char *save = NULL, *n = strtok_r(copy, " ", &save); n; n = strtok_r(NULL, " ", &save))
        snprintf(keys + strlen(keys), sizeof keys - strlen(keys), "%s%s", keys[0] ? " " : "",
                 key(n));
    redisReply *r = redisCommand(producer, "XADD %s * k %s", key("bell"), keys);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    freeReplyObject(r);
}

/* XADD an event with this id (and a seq) to stream name, without ringing. */
static void produce_silent(const char *name, long long event_id)
{
    chorus_event ev = {.id = event_id, .workspace_id = 1, .channel_id = 7, .seq = event_id,
                       .created_at_us = 1};
    strcpy(ev.type, "message.created");
    buf b;
    buf_init(&b, 0);
    assert_int_equal(event_encode_msgpack(&ev, &b), CHORUS_OK);
    redisReply *r = redisCommand(producer, "XADD %s * e %b", key(name), b.data, b.len);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    freeReplyObject(r);
    buf_free(&b);
}

/* XADD an event to stream name, then the bell when the readers have one. */
static void produce(const char *name, long long event_id)
{
    produce_silent(name, event_id);
    if (bell_sweep_ms)
        ring(name);
}

static void produce_raw(const char *name, const char *field, const char *value)
{
    redisReply *r = redisCommand(producer, "XADD %s * %s %s", key(name), field, value);
    assert_non_null(r);
    freeReplyObject(r);
    if (bell_sweep_ms)
        ring(name);
}

/* ---- spinning the loop ------------------------------------------------------------- */

static bool run_until(test_cond_fn pred, void *arg, int timeout_ms)
{
    return test_run_until(loop, pred, arg, timeout_ms);
}

static bool got_at_least(void *arg)
{
    return ngot >= *(int *)arg;
}

static bool control_up(void *arg)
{
    (void)arg;
    return rclient_connected(control);
}

static bool resolved(void *arg)
{
    const char *const *a = arg;
    return rstream_position((rstream *)a[0], a[1])[0] != '\0';
}

static void expect_events(int n, const char *name, const long long *ids, int timeout_ms)
{
    int want = ngot + n, from = ngot;
    if (!run_until(got_at_least, &want, timeout_ms))
        fail_msg("%d of %d entries of %s arrived within %d ms", ngot - from, n, name,
                 timeout_ms);
    for (int i = 0; i < n; i++) {
        assert_string_equal(got[from + i].key, key(name));
        assert_int_equal(got[from + i].event_id, ids[i]);
    }
}

/* Nothing more arrives within ms. */
static void expect_quiet(int ms)
{
    int want = ngot + 1;
    if (run_until(got_at_least, &want, ms))
        fail_msg("an entry of %s arrived, none was expected", got[ngot - 1].key);
}

static rstream *reader_new_count(int block_ms, int max_streams, int gap_ms, int count)
{
    rstream_opts o = {.url = test_env("REDIS_URL"), .name = "test", .control = control,
                      .block_ms = block_ms, .max_streams = max_streams, .gap_ms = gap_ms,
                      .count = count, .bell = bell_sweep_ms ? key("bell") : NULL,
                      .sweep_ms = bell_sweep_ms};
    rstream *rs = rstream_new(loop, &o, on_entry, NULL);
    assert_non_null(rs);
    return rs;
}

static rstream *reader_new_gap(int block_ms, int max_streams, int gap_ms)
{
    return reader_new_count(block_ms, max_streams, gap_ms, 0);
}

static rstream *reader_new(int block_ms, int max_streams)
{
    return reader_new_gap(block_ms, max_streams, 0);
}

/* ---- fixture ------------------------------------------------------------------------- */

static int setup(void **state)
{
    (void)state;
    bell_sweep_ms = 0;
    loop = ev_loop_new(EVFLAG_AUTO);
    rclient_opts o = {.url = test_env("REDIS_URL"), .name = "control"};
    control = rclient_new(loop, &o);
    char host[64];
    int port, db;
    assert_int_equal(rclient_parse_url(test_env("REDIS_URL"), host, sizeof host, &port, &db),
                     0);
    producer = redisConnect(host, port);
    assert_true(producer && !producer->err);
    freeReplyObject(redisCommand(producer, "SELECT %d", db));
    assert_true(run_until(control_up, NULL, 5000));
    ngot = 0;
    return 0;
}

static int setup_bell(void **state)
{
    setup(state);
    bell_sweep_ms = 60000;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    redisReply *r = redisCommand(producer, "KEYS rstest:%d:*", (int)getpid());
    for (size_t i = 0; r && i < r->elements; i++)
        freeReplyObject(redisCommand(producer, "DEL %s", r->element[i]->str));
    freeReplyObject(r);
    redisFree(producer);
    rclient_free(control);
    ev_run(loop, EVRUN_NOWAIT); /* let deferred frees finish */
    ev_loop_destroy(loop);
    return 0;
}

/* ---- tests ------------------------------------------------------------------------- */

/* From "0-0" a subscription reads what the stream holds, in order, then what comes. */
static void test_reads_history_then_live(void **state)
{
    (void)state;
    produce("a", 1);
    produce("a", 2);
    produce("a", 3);
    rstream *rs = reader_new(1000, 0);
    assert_int_equal(rstream_subscribe(rs, key("a"), "0-0"), CHORUS_OK);
    expect_events(3, "a", (long long[]){1, 2, 3}, 5000);
    produce("a", 4);
    produce("a", 5);
    expect_events(2, "a", (long long[]){4, 5}, 3000);
    rstream_free(rs);
}

/* A subscription made while the read blocks (BLOCK 10 s) is read within a second:
 * the reader is unblocked. "$" skips what the stream held before. */
static void test_subscribe_while_blocked(void **state)
{
    (void)state;
    produce("b", 10); /* before the subscription: not wanted */
    rstream *rs = reader_new(10000, 0);
    assert_int_equal(rstream_subscribe(rs, key("a"), "0-0"), CHORUS_OK);
    expect_quiet(500); /* the read is now blocked on "a" */
    assert_int_equal(rstream_unresolved(rs), 0);
    assert_int_equal(rstream_subscribe(rs, key("b"), "$"), CHORUS_OK);
    assert_int_equal(rstream_unresolved(rs), 1); /* until Redis answers the XREVRANGE */
    const char *args[] = {(const char *)rs, key("b")};
    assert_true(run_until(resolved, args, 3000));
    assert_int_equal(rstream_unresolved(rs), 0);
    produce("b", 11);
    int64_t t0 = test_now_ms();
    expect_events(1, "b", (long long[]){11}, 1000);
    print_message("entry of the new subscription after %lld ms\n",
                  (long long)(test_now_ms() - t0));
    rstream_free(rs);
}

/* With a gap, entries that come after a read wait for the gap and then arrive in one
 * read; a change of the set is read at once all the same. Without one, the next read
 * is sent at once. The gap is a second, so that "waited" and "at once" stay apart on a
 * busy machine (a CI host that stalls the test for 100 ms must not fail it). */
static void test_gap_between_reads(void **state)
{
    (void)state;
    produce("g2", 21); /* history of a stream subscribed during the gap */
    rstream *rs = reader_new_gap(10000, 0, 1000);
    assert_int_equal(rstream_subscribe(rs, key("g"), "0-0"), CHORUS_OK);
    produce("g", 1);
    expect_events(1, "g", (long long[]){1}, 3000);
    int64_t t1 = test_now_ms();
    produce("g", 2);
    produce("g", 3);
    expect_events(2, "g", (long long[]){2, 3}, 3000);
    int64_t t_gap = test_now_ms() - t1;
    /* A gap has begun again: a new subscription does not wait for it. */
    t1 = test_now_ms();
    assert_int_equal(rstream_subscribe(rs, key("g2"), "0-0"), CHORUS_OK);
    expect_events(1, "g2", (long long[]){21}, 3000);
    int64_t t_set = test_now_ms() - t1;
    print_message("the gap's entries after %lld ms, a new subscription's after %lld ms\n",
                  (long long)t_gap, (long long)t_set);
    assert_true(t_gap >= 900);
    assert_true(t_set < 700);
    rstream_free(rs);

    /* The same entries, and a reader without a gap: at once. */
    rs = reader_new_gap(10000, 0, 0);
    assert_int_equal(rstream_subscribe(rs, key("g"), "$"), CHORUS_OK);
    const char *args[] = {(const char *)rs, key("g")};
    assert_true(run_until(resolved, args, 3000));
    produce("g", 4);
    expect_events(1, "g", (long long[]){4}, 3000);
    t1 = test_now_ms();
    produce("g", 5);
    expect_events(1, "g", (long long[]){5}, 3000);
    print_message("without a gap: the next entry after %lld ms\n", (long long)(test_now_ms() - t1));
    assert_true(test_now_ms() - t1 < 700);
    rstream_free(rs);
}

/* After an unsubscribe nothing more of that stream arrives; the others go on. */
static void test_unsubscribe(void **state)
{
    (void)state;
    rstream *rs = reader_new(10000, 0);
    assert_int_equal(rstream_subscribe(rs, key("a"), "0-0"), CHORUS_OK);
    assert_int_equal(rstream_subscribe(rs, key("b"), "0-0"), CHORUS_OK);
    assert_int_equal(rstream_count(rs), 2);
    expect_quiet(300);
    rstream_unsubscribe(rs, key("a"));
    assert_int_equal(rstream_count(rs), 1);
    produce("a", 20);
    expect_quiet(500);
    produce("b", 21);
    expect_events(1, "b", (long long[]){21}, 1000);
    rstream_free(rs);
}

/* Many subscriptions, half of them dropped in between: each key still finds its own
 * position (the reader indexes its streams by key; a removal moves the last one). */
static void test_many_streams(void **state)
{
    (void)state;
    rstream *rs = reader_new(10000, 600);
    char k[RSTREAM_KEY_MAX], id[RSTREAM_ID_MAX];
    for (int i = 0; i < 600; i++) {
        snprintf(k, sizeof k, "%s:%d", key("many"), i);
        snprintf(id, sizeof id, "%d-0", i + 1);
        assert_int_equal(rstream_subscribe(rs, k, id), CHORUS_OK);
    }
    assert_int_equal(rstream_count(rs), 600);
    for (int i = 0; i < 600; i += 2) {
        snprintf(k, sizeof k, "%s:%d", key("many"), i);
        rstream_unsubscribe(rs, k);
    }
    assert_int_equal(rstream_count(rs), 300);
    for (int i = 0; i < 600; i++) {
        snprintf(k, sizeof k, "%s:%d", key("many"), i);
        snprintf(id, sizeof id, "%d-0", i + 1);
        assert_int_equal(rstream_subscribed(rs, k), i % 2 == 1);
        assert_string_equal(rstream_position(rs, k), i % 2 ? id : "");
    }
    snprintf(k, sizeof k, "%s:%d", key("many"), 0);
    assert_int_equal(rstream_subscribe(rs, k, "7-7"), CHORUS_OK);
    assert_string_equal(rstream_position(rs, k), "7-7");
    rstream_free(rs);
}

/* The reader's connection is killed; entries added meanwhile arrive after the
 * reconnect, each once, in order. */
static void test_resumes_after_connection_loss(void **state)
{
    (void)state;
    rstream *rs = reader_new(5000, 0);
    assert_int_equal(rstream_subscribe(rs, key("c"), "0-0"), CHORUS_OK);
    produce("c", 30);
    expect_events(1, "c", (long long[]){30}, 3000);
    expect_quiet(200);
    /* The reader is the client blocked in XREAD. */
    redisReply *r = redisCommand(producer, "CLIENT LIST");
    assert_non_null(r);
    char *line = strstr(r->str, "cmd=xread");
    assert_non_null(line);
    while (line > r->str && line[-1] != '\n')
        line--;
    long long id = atoll(strstr(line, "id=") + 3);
    freeReplyObject(r);
    freeReplyObject(redisCommand(producer, "CLIENT KILL ID %lld", id));
    for (int i = 31; i <= 35; i++)
        produce("c", i);
    expect_events(5, "c", (long long[]){31, 32, 33, 34, 35}, 5000);
    expect_quiet(500); /* and nothing twice */
    rstream_free(rs);
}

/* Entries that are not events are skipped; the next good one still arrives. */
static void test_bad_entries_are_skipped(void **state)
{
    (void)state;
    rstream *rs = reader_new(1000, 0);
    assert_int_equal(rstream_subscribe(rs, key("d"), "0-0"), CHORUS_OK);
    produce_raw("d", "e", "not msgpack");
    produce_raw("d", "x", "no e field");
    produce("d", 40);
    expect_events(1, "d", (long long[]){40}, 3000);
    assert_string_not_equal(rstream_position(rs, key("d")), "0-0");
    rstream_free(rs);
}

/* Bad arguments and the subscription bound. */
static void test_bounds_and_bad_arguments(void **state)
{
    (void)state;
    rstream *rs = reader_new(1000, 2);
    assert_int_equal(rstream_subscribe(rs, key("e1"), "0-0"), CHORUS_OK);
    assert_int_equal(rstream_subscribe(rs, key("e1"), "0-0"), CHORUS_OK); /* same: no-op */
    assert_int_equal(rstream_subscribe(rs, key("e2"), "5-1"), CHORUS_OK);
    assert_int_equal(rstream_subscribe(rs, key("e3"), "0-0"), CHORUS_AGAIN);
    assert_int_equal(rstream_subscribe(rs, key("e4"), "latest"), CHORUS_ERR);
    assert_int_equal(rstream_subscribe(rs, key("e4"), ""), CHORUS_ERR);
    char longkey[RSTREAM_KEY_MAX + 8];
    memset(longkey, 'k', sizeof longkey - 1);
    longkey[sizeof longkey - 1] = '\0';
    assert_int_equal(rstream_subscribe(rs, longkey, "0-0"), CHORUS_ERR);
    assert_int_equal(rstream_count(rs), 2);
    assert_string_equal(rstream_position(rs, key("e2")), "5-1");
    assert_string_equal(rstream_position(rs, key("nope")), "");
    rstream_free(rs);
}

/* Freeing the reader from its own callback is safe (the sanitizer build checks). */
static void test_free_inside_callback(void **state)
{
    (void)state;
    produce("f", 50);
    produce("f", 51);
    rstream *rs = reader_new(1000, 0);
    free_me_in_callback = rs;
    assert_int_equal(rstream_subscribe(rs, key("f"), "0-0"), CHORUS_OK);
    expect_events(1, "f", (long long[]){50}, 3000);
    expect_quiet(300); /* 51 came in the same read, after the free: not delivered */
}

/* ---- the doorbell ------------------------------------------------------------------ */

/* With a bell, reads name only the streams the bell rang for: an entry added without a
 * bell waits (here: for a sweep a minute away) while a rung one arrives; a later bell
 * naming its stream brings it. A bell naming streams the reader does not follow, or
 * nothing, changes nothing. */
static void test_bell_reads_only_rung_streams(void **state)
{
    (void)state;
    rstream *rs = reader_new(10000, 0);
    assert_int_equal(rstream_subscribe(rs, key("a"), "0-0"), CHORUS_OK);
    assert_int_equal(rstream_subscribe(rs, key("b"), "0-0"), CHORUS_OK);
    expect_quiet(300); /* the first read (every stream) is done: blocked on the bell */
    produce_silent("b", 1);
    produce("a", 2);
    int64_t t0 = test_now_ms();
    expect_events(1, "a", (long long[]){2}, 1000);
    print_message("a rung entry after %lld ms\n", (long long)(test_now_ms() - t0));
    expect_quiet(1000); /* b's entry was not rung: not read */
    ring("zz");
    redisReply *r = redisCommand(producer, "XADD %s * k %s", key("bell"), "");
    freeReplyObject(r);
    expect_quiet(300);
    ring("zz b");
    expect_events(1, "b", (long long[]){1}, 1000);
    rstream_free(rs);
}

/* Entries never rung for arrive with the next sweep, which names every stream. */
static void test_sweep_reads_unrung_streams(void **state)
{
    (void)state;
    bell_sweep_ms = 400;
    rstream *rs = reader_new(10000, 0);
    assert_int_equal(rstream_subscribe(rs, key("s"), "0-0"), CHORUS_OK);
    expect_quiet(300);
    produce_silent("s", 7);
    int64_t t0 = test_now_ms();
    expect_events(1, "s", (long long[]){7}, 2000);
    int64_t took = test_now_ms() - t0;
    print_message("an entry without a bell after %lld ms (sweep 400 ms)\n", (long long)took);
    assert_true(took <= 1000);
    rstream_free(rs);
}

/* One bell for more entries than a read's COUNT: the stream stays due until it is read
 * to its end. */
static void test_bell_reads_past_count(void **state)
{
    (void)state;
    rstream *rs = reader_new_count(10000, 0, 0, 2);
    assert_int_equal(rstream_subscribe(rs, key("n"), "$"), CHORUS_OK);
    const char *args[] = {(const char *)rs, key("n")};
    assert_true(run_until(resolved, args, 3000));
    for (int i = 1; i <= 7; i++)
        produce_silent("n", i);
    ring("n");
    expect_events(7, "n", (long long[]){1, 2, 3, 4, 5, 6, 7}, 2000);
    rstream_free(rs);
}

#define BOTH(t) cmocka_unit_test_setup_teardown(t, setup, teardown), \
                cmocka_unit_test_setup_teardown(t, setup_bell, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        BOTH(test_reads_history_then_live),
        BOTH(test_subscribe_while_blocked),
        BOTH(test_unsubscribe),
        BOTH(test_many_streams),
        BOTH(test_gap_between_reads),
        BOTH(test_resumes_after_connection_loss),
        BOTH(test_bad_entries_are_skipped),
        BOTH(test_bounds_and_bad_arguments),
        BOTH(test_free_inside_callback),
        cmocka_unit_test_setup_teardown(test_bell_reads_only_rung_streams, setup_bell, teardown),
        cmocka_unit_test_setup_teardown(test_sweep_reads_unrung_streams, setup_bell, teardown),
        cmocka_unit_test_setup_teardown(test_bell_reads_past_count, setup_bell, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
