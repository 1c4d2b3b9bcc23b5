/* test_wss.c - the WebSocket protocol of a WSS node (API.md "WebSocket"), spoken by the
 * test's own client (tests/lib/wsclient.c, not libwebsockets) against
 * `chorus run --roles gateway,wss` on a migrated database of its own:
 * the hello frame, authentication (4001), client ops and their errors, the frame size
 * bound (1009), the msgpack subprotocol, and delivery of posted messages to the sessions
 * of members (once each, in seq order), and to nobody else. */
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "api.h"
#include "chorus/event.h"
#include "chorus/rclient.h"
#include "chorus/wssreg.h"
#include "wstest.h"

static api_server S;
static int wss_port;

static int group_setup(void **state)
{
    (void)state;
    api_db_create(&S, "wss");
    /* a small recent-event buffer, so the memory bound of the 4008 test is tight */
    const char *env[] = {"CHORUS_WSS_RECENT_BYTES=1048576", NULL};
    wss_port = api_server_start_wss(&S, "wss-test", env);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    api_server_stop(&S);
    api_db_drop(&S);
    return 0;
}

/* The first frame is hello: node, session, heartbeat. */
static void test_hello(void **state)
{
    (void)state;
    long long uid;
    char *tok = api_new_user(S.port, "wss-hello", &uid);
    ws_client c;
    wst_open(&c, wss_port, tok, "chorus.json");
    json_t *h = wst_next_json(&c);
    assert_string_equal(api_str(h, "t"), "hello");
    assert_string_equal(api_str(h, "node"), "wss-test");
    assert_true(strncmp(api_str(h, "session"), "wss-test-", 9) == 0);
    assert_true(api_int(h, "heartbeat_ms") > 0);
    json_decref(h);
    /* a second session gets another id */
    ws_client c2;
    wst_open(&c2, wss_port, tok, NULL); /* no subprotocol: JSON */
    json_t *h2 = wst_next_json(&c2);
    assert_string_equal(api_str(h2, "t"), "hello");
    json_decref(h2);
    ws_close(&c);
    ws_close(&c2);
    free(tok);
}

/* The token may come in the Authorization header instead. */
static void test_authorization_header(void **state)
{
    (void)state;
    long long uid;
    char *tok = api_new_user(S.port, "wss-header", &uid);
    ws_client c;
    char hdr[1200];
    snprintf(hdr, sizeof hdr, "Authorization: Bearer %s\r\n", tok);
    assert_int_equal(ws_connect(&c, wss_port, "/ws", "chorus.json", hdr), 101);
    wst_expect_t(&c, "hello", NULL);
    ws_close(&c);
    free(tok);
}

/* No token, a tampered one, an expired one, alg none: close 4001, no hello. */
static void test_bad_tokens_get_4001(void **state)
{
    (void)state;
    long long uid;
    char *tok = api_new_user(S.port, "wss-bad", &uid);
    char tampered[1024];
    snprintf(tampered, sizeof tampered, "%s", tok);
    tampered[strlen(tampered) - 2] ^= 1;
    char *expired = api_jwt_hs256(API_JWT_SECRET, api_p("%lld", uid), -7200, -3600);
    char *none = api_jwt_sign("none", API_JWT_SECRET, "{\"alg\":\"none\",\"typ\":\"JWT\"}",
                              api_p("{\"sub\":\"%lld\",\"iat\":1,\"exp\":9999999999}", uid));
    const char *paths[] = {"/ws", api_p("/ws?token=%s", tampered),
                           api_p("/ws?token=%s", expired), api_p("/ws?token=%s", none),
                           "/ws?token="};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        ws_client c;
        assert_int_equal(ws_connect(&c, wss_port, paths[i], "chorus.json", NULL), 101);
        wst_expect_close(&c, 4001, 5000);
        ws_close(&c);
    }
    free(expired);
    free(none);
    free(tok);
}

/* ping answers pong; unknown ops and malformed frames get an error frame and the
 * session stays open; a frame over 64 KiB closes it with 1009. */
static void test_ops_and_errors(void **state)
{
    (void)state;
    long long uid;
    char *tok = api_new_user(S.port, "wss-ops", &uid);
    ws_client c;
    wst_open(&c, wss_port, tok, "chorus.json");
    wst_expect_t(&c, "hello", NULL);
    assert_int_equal(ws_send_text(&c, "{\"op\":\"ping\"}"), 0);
    wst_expect_t(&c, "pong", NULL);
    assert_int_equal(ws_send_text(&c, "{\"op\":\"fly\"}"), 0);
    wst_expect_t(&c, "error", "unknown_op");
    assert_int_equal(ws_send_text(&c, "not json"), 0);
    wst_expect_t(&c, "error", "bad_frame");
    assert_int_equal(ws_send_text(&c, "[1,2]"), 0);
    wst_expect_t(&c, "error", "bad_frame");
    assert_int_equal(ws_send_text(&c, "{\"no_op\":1}"), 0);
    wst_expect_t(&c, "error", "bad_frame");
    assert_int_equal(ws_send_text(&c, "{\"op\":\"ping\"}"), 0);
    wst_expect_t(&c, "pong", NULL); /* still open */
    size_t big = 70000;
    char *huge = malloc(big + 1);
    memset(huge, ' ', big);
    huge[big] = '\0';
    huge[0] = '{';
    huge[big - 1] = '}';
    assert_int_equal(ws_send_text(&c, huge), 0);
    wst_expect_close(&c, 1009, 5000);
    free(huge);
    ws_close(&c);
    free(tok);
}

/* chorus.msgpack: the same frames as binary msgpack maps. */
static void test_msgpack_protocol(void **state)
{
    (void)state;
    long long uid;
    char *tok = api_new_user(S.port, "wss-mp", &uid);
    ws_client c;
    wst_open(&c, wss_port, tok, "chorus.msgpack");
    const char *want[] = {"hello", "pong"};
    for (int i = 0; i < 2; i++) {
        json_t *j = wst_next(&c, true, 5000);
        assert_string_equal(api_str(j, "t"), want[i]);
        json_decref(j);
        if (i == 0) { /* {"op":"ping"} as msgpack */
            const char ping[] = "\x81\xa2op\xa4ping";
            assert_int_equal(ws_send(&c, 2, ping, sizeof ping - 1), 0);
        }
    }
    ws_close(&c);
    free(tok);
}

/* Reads message.created frames until n have come; checks seqs are consecutive from
 * first_seq and the text. JSON or msgpack by the session's protocol. */
static void expect_messages(ws_client *c, bool msgpack, long long ch, long long first_seq,
                            int n)
{
    for (int i = 0; i < n; i++) {
        json_t *j = wst_next(c, msgpack, 10000);
        assert_non_null(j);
        assert_string_equal(api_str(j, "t"), "message.created");
        assert_int_equal(api_int(j, "ch"), ch);
        assert_int_equal(api_int(j, "seq"), first_seq + i);
        json_t *d = json_object_get(j, "d");
        assert_string_equal(api_str(d, "text"), api_p("delivery %d", i));
        json_decref(j);
    }
}

/* Messages posted over REST reach every member session (JSON and msgpack) exactly once,
 * in seq order; a workspace member outside the private channel gets nothing. */
static void test_delivery_to_members_only(void **state)
{
    (void)state;
    long long ua, ub, uc;
    char *ta = api_new_user(S.port, "wss-a", &ua);
    char *tb = api_new_user(S.port, "wss-b", &ub);
    char *tc = api_new_user(S.port, "wss-c", &uc);
    json_t *w = api_must(S.port, 201, "POST", "/workspaces", ta,
                         json_pack("{s:s,s:s}", "name", "Deliver", "slug", "wss-deliver"));
    long long ws = api_int(w, "id");
    json_decref(w);
    api_must_drop(S.port, 201, "POST", api_p("/workspaces/%lld/members", ws), ta,
                         json_pack("{s:I}", "user_id", (json_int_t)ub));
    api_must_drop(S.port, 201, "POST", api_p("/workspaces/%lld/members", ws), ta,
                         json_pack("{s:I}", "user_id", (json_int_t)uc));
    json_t *c = api_must(S.port, 201, "POST", api_p("/workspaces/%lld/channels", ws), ta,
                         json_pack("{s:s,s:b}", "name", "secret", "private", 1));
    long long ch = api_int(c, "id");
    json_decref(c);
    api_must_drop(S.port, 201, "POST",
                         api_p("/workspaces/%lld/channels/%lld/members", ws, ch), ta,
                         json_pack("{s:I}", "user_id", (json_int_t)ub));
    long long seq0 = api_db_int(S.pg, api_p("SELECT last_seq FROM channels WHERE id = %lld", ch),
                                NULL);
    wst_await_published(S.pg, ch);

    ws_client a, b, cc;
    wst_open(&a, wss_port, ta, "chorus.json");
    wst_open(&b, wss_port, tb, "chorus.msgpack");
    wst_open(&cc, wss_port, tc, "chorus.json");
    wst_expect_t(&a, "hello", NULL);
    wst_expect_t(&cc, "hello", NULL);
    ws_frame hb;
    assert_int_equal(ws_recv(&b, &hb, 5000), 0); /* hello, as msgpack */
    ws_frame_free(&hb);
    /* The node reads the channel's partition once the stream position is known. */
    const char *streams = "chorus_rstream_streams{reader=\"wss\"}";
    for (int64_t end = test_now_ms() + 5000; test_metric(S.port, streams) < 1; usleep(20000))
        if (test_now_ms() > end)
            fail_msg("the node did not subscribe to the channel's partition within 5 s");

    enum { N = 20 };
    for (int i = 0; i < N; i++)
        api_must_drop(S.port, 201, "POST",
                             api_p("/workspaces/%lld/channels/%lld/messages", ws, ch), ta,
                             json_pack("{s:s}", "text", api_p("delivery %d", i)));
    expect_messages(&a, false, ch, seq0 + 1, N);
    expect_messages(&b, true, ch, seq0 + 1, N);
    wst_expect_nothing(&a, 300);
    wst_expect_nothing(&b, 100);
    wst_expect_nothing(&cc, 100);
    ws_close(&a);
    ws_close(&b);
    ws_close(&cc);
    free(ta);
    free(tb);
    free(tc);
}

/* A session that reads nothing is closed with 4008 once its queue passes the bound
 * (1 MiB here) while another session of the channel gets every message. */
static bool is_message(const ws_frame *f)
{
    return f->opcode == 1 && strstr(f->data, "\"message.created\"");
}

/* A message frame of the fast reader: its seq must follow the last one's. Its frames
 * go out both at once and, once its socket is full, through the queue: neither may
 * overtake the other. */
static int fast_message(const ws_frame *f, long long *last_seq)
{
    if (!is_message(f))
        return 0;
    json_t *j = json_loadb(f->data, f->len, 0, NULL);
    long long seq = api_int(j, "seq");
    json_decref(j);
    if (*last_seq && seq != *last_seq + 1)
        fail_msg("the fast session got seq %lld after %lld", seq, *last_seq);
    *last_seq = seq;
    return 1;
}

static void test_slow_consumer_is_closed_4008(void **state)
{
    (void)state;
    long long ua, ub;
    char *ta = api_new_user(S.port, "wss-fast", &ua);
    char *tb = api_new_user(S.port, "wss-slow", &ub);
    json_t *w = api_must(S.port, 201, "POST", "/workspaces", ta,
                         json_pack("{s:s,s:s}", "name", "Slow", "slug", "wss-slow"));
    long long ws = api_int(w, "id");
    json_decref(w);
    api_must_drop(S.port, 201, "POST", api_p("/workspaces/%lld/members", ws), ta,
                         json_pack("{s:I}", "user_id", (json_int_t)ub));
    json_t *c = api_must(S.port, 201, "POST", api_p("/workspaces/%lld/channels", ws), ta,
                         json_pack("{s:s}", "name", "firehose"));
    long long ch = api_int(c, "id");
    json_decref(c);
    api_must_drop(S.port, 200, "POST",
                         api_p("/workspaces/%lld/channels/%lld/join", ws, ch), tb, NULL);
    wst_await_published(S.pg, ch);
    double closes0 = test_metric(S.port, "chorus_wss_slow_consumer_closes_total");
    double streams0 = test_metric(S.port, "chorus_rstream_streams{reader=\"wss\"}");

    ws_client fast, slow;
    wst_open(&fast, wss_port, ta, "chorus.json");
    wst_open(&slow, wss_port, tb, "chorus.json");
    wst_expect_t(&fast, "hello", NULL);
    /* A first op that is not a resume: live events flow at once (docs/WSS.md). */
    assert_int_equal(ws_send_text(&fast, "{\"op\":\"ping\"}"), 0);
    assert_int_equal(ws_send_text(&slow, "{\"op\":\"ping\"}"), 0);
    wst_expect_t(&fast, "pong", NULL);
    for (int64_t end = test_now_ms() + 5000;
         test_metric(S.port, "chorus_rstream_streams{reader=\"wss\"}") < (streams0 > 0 ? streams0 : 1);
         usleep(20000))
        if (test_now_ms() > end)
            fail_msg("the node did not subscribe within 5 s");
    usleep(200 * 1000);

    /* 400 x 39 KB: more than the kernel's socket buffers on both ends (Debian's
     * defaults let them grow to 4 and 6 MB) plus the node's 1 MiB queue. */
    enum { N = 400, TEXT = 39000 };
    char *text = malloc(TEXT + 1);
    memset(text, 'x', TEXT);
    text[TEXT] = '\0';
    int got_fast = 0;
    long long last_seq = 0;
    int64_t t_posts = test_now_ms();
    long rss0 = test_rss_kb(S.proc.pid), rss_max = rss0;
    for (int i = 0; i < N; i++) {
        api_must_drop(S.port, 201, "POST",
                             api_p("/workspaces/%lld/channels/%lld/messages", ws, ch), ta,
                             json_pack("{s:s}", "text", text));
        ws_frame f; /* the fast reader keeps up as it goes */
        while (ws_recv(&fast, &f, 1) == 0) {
            got_fast += fast_message(&f, &last_seq);
            ws_frame_free(&f);
        }
        long rss = test_rss_kb(S.proc.pid);
        rss_max = rss > rss_max ? rss : rss_max;
    }
    while (got_fast < N) {
        ws_frame f;
        if (ws_recv(&fast, &f, 10000) != 0)
            fail_msg("the fast session got %d of %d messages", got_fast, N);
        if (f.opcode == 8)
            fail_msg("the fast session was closed (%d) after %d messages", f.close_code,
                     got_fast);
        got_fast += fast_message(&f, &last_seq);
        ws_frame_free(&f);
    }
    print_message("fast session: all %d after %lld ms\n", N, (long long)(test_now_ms() - t_posts));
    /* The slow one: what the kernel buffers held, then the close. */
    int got_slow = 0, code = 0;
    for (;;) {
        ws_frame f;
        if (ws_recv(&slow, &f, 10000) != 0)
            break;
        if (f.opcode == 8)
            code = f.close_code;
        got_slow += f.opcode == 1;
        ws_frame_free(&f);
        if (code)
            break;
    }
    print_message("slow session: %d frames, then close %d (%lld ms after the posts began)\n",
                  got_slow, code, (long long)(test_now_ms() - t_posts));
    /* The close frame follows what the socket already held; a peer that has not read
     * for 5 s by then is cut without it (docs/WSS.md), which a loaded machine can
     * reach: then the node's counter is the evidence. */
    assert_true(code == 4008 || code == 0);
    assert_true(got_slow < N);
    assert_true(test_metric(S.port, "chorus_wss_slow_consumer_closes_total") >= closes0 + 1);
    /* The node held at most the slow session's queue (1 MiB) and its recent buffer
     * (1 MiB here) of the 15.6 MB posted, plus the gateway's and the worker's work. */
    print_message("node RSS: %ld KiB before, at most %ld KiB while 15.6 MB went out\n", rss0,
                  rss_max);
#ifndef __SANITIZE_ADDRESS__ /* ASan keeps freed memory in quarantine: no bound there */
    assert_true(rss_max - rss0 < 12 * 1024);
#endif
    free(text);
    ws_close(&fast);
    ws_close(&slow);
    free(ta);
    free(tb);
}

/* Reads frames until the message of seq `last` of channel ch; every message seq must
 * follow the one before (no gap, no repeat). Returns how many "resumed" frames came,
 * and in *resumed_after the seq of the last message before the (first) one. */
static int read_through(ws_client *c, long long ch, long long from, long long last,
                        long long *resumed_after)
{
    int resumed = 0;
    long long want = from;
    while (want <= last) {
        json_t *j = wst_next_json(c);
        const char *t = api_str(j, "t");
        if (strcmp(t, "resumed") == 0) {
            if (resumed++ == 0)
                *resumed_after = want - 1;
        } else if (strcmp(t, "message.created") == 0) {
            assert_int_equal(api_int(j, "ch"), ch);
            if (api_int(j, "seq") != want)
                fail_msg("seq %lld came where %lld was due", api_int(j, "seq"), want);
            want++;
        } else {
            fail_msg("unexpected frame %s", t);
        }
        json_decref(j);
    }
    return resumed;
}

/* Disconnect, 500 posts, reconnect and resume: all 500 in order, then "resumed"; five
 * posts made while the resume runs follow without a gap or a repeat. A position whose
 * events retention has deleted is "resume_too_far"; malformed resumes are refused. */
/* A user (its token returned) with a workspace and channel of its own, named after
 * tag; path gets the channel's messages route, *seen its last seq. */
static char *channel_of_own(const char *tag, long long *ch, char *path, size_t pathlen,
                            long long *seen)
{
    long long ua;
    char *ta = api_new_user(S.port, tag, &ua);
    json_t *w = api_must(S.port, 201, "POST", "/workspaces", ta,
                         json_pack("{s:s,s:s}", "name", tag, "slug", tag));
    long long ws = api_int(w, "id");
    json_decref(w);
    json_t *c = api_must(S.port, 201, "POST", api_p("/workspaces/%lld/channels", ws), ta,
                         json_pack("{s:s}", "name", tag));
    *ch = api_int(c, "id");
    json_decref(c);
    snprintf(path, pathlen, "/workspaces/%lld/channels/%lld/messages", ws, *ch);
    *seen = api_db_int(S.pg, api_p("SELECT last_seq FROM channels WHERE id = %lld", *ch), NULL);
    return ta;
}

static void test_resume(void **state)
{
    (void)state;
    long long ch, seen;
    char path[256];
    char *ta = channel_of_own("wss-resume", &ch, path, sizeof path, &seen);
    enum { MISSED = 500, LIVE = 5 };
    for (int i = 0; i < MISSED; i++)
        api_must_drop(S.port, 201, "POST", path, ta,
                             json_pack("{s:s}", "text", api_p("missed %d", i)));

    wst_await_published(S.pg, ch); /* so none of the 500 is live: all must come from the resume */
    ws_client a;
    wst_open(&a, wss_port, ta, "chorus.json");
    wst_expect_t(&a, "hello", NULL);
    char op[128];
    snprintf(op, sizeof op, "{\"op\":\"resume\",\"positions\":{\"%lld\":%lld}}", ch, seen);
    assert_int_equal(ws_send_text(&a, op), 0);
    for (int i = 0; i < LIVE; i++)
        api_must_drop(S.port, 201, "POST", path, ta,
                             json_pack("{s:s}", "text", api_p("live %d", i)));
    long long resumed_after = -1;
    int resumed = read_through(&a, ch, seen + 1, seen + MISSED + LIVE, &resumed_after);
    if (resumed == 0) { /* all live ones came before it: it must still come, once */
        json_t *j = wst_next_json(&a);
        assert_string_equal(api_str(j, "t"), "resumed");
        json_decref(j);
        resumed = 1;
        resumed_after = seen + MISSED + LIVE;
    }
    assert_int_equal(resumed, 1);
    assert_true(resumed_after >= seen + MISSED);
    print_message("resume: %d missed events, then resumed, then the live ones\n", MISSED);
    wst_expect_nothing(&a, 300);

    /* Retention deleted the first missed events: too far, page over REST. */
    PQclear(api_db_query(S.pg, api_p("DELETE FROM outbox WHERE channel_id = %lld AND seq <= %lld",
                                     ch, seen + 10), NULL));
    assert_int_equal(ws_send_text(&a, op), 0);
    json_t *e = wst_next_json(&a);
    assert_string_equal(api_str(e, "code"), "resume_too_far");
    assert_int_equal(api_int(e, "ch"), ch);
    assert_int_equal(api_int(e, "seq"), seen);
    json_decref(e);
    wst_expect_t(&a, "resumed", NULL);

    const char *bad[] = {"{\"op\":\"resume\"}", "{\"op\":\"resume\",\"positions\":{}}",
                         "{\"op\":\"resume\",\"positions\":{\"999999\":1}}",
                         "{\"op\":\"resume\",\"positions\":{\"x\":1}}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(ws_send_text(&a, bad[i]), 0);
        wst_expect_t(&a, "error", "bad_resume");
    }
    ws_close(&a);
    free(ta);
}

/* resume=1 in the upgrade URL: the node holds live events until the resume comes, well
 * past the 500 ms a session without it waits for a first op. Three posts made after
 * both sessions opened: the plain session gets them live after its grace, the one that
 * promised a resume gets nothing for 1.5 s, then all three from its resume, in order. */
static void test_resume_promised(void **state)
{
    (void)state;
    long long ch, seen;
    char path[256];
    char *ta = channel_of_own("wss-promise", &ch, path, sizeof path, &seen);
    /* The workspace's and channel's own events are out before the sessions open, so
     * only the three posts below can reach them. */
    const char *q = "SELECT count(*) FROM outbox WHERE published_at IS NULL";
    for (int64_t end = test_now_ms() + 10000; api_db_int(S.pg, q, NULL) > 0; usleep(20000))
        if (test_now_ms() > end)
            fail_msg("the outbox was not drained within 10 s");
    ws_client promised, plain;
    assert_int_equal(ws_connect(&promised, wss_port, api_p("/ws?token=%s&resume=1", ta),
                                "chorus.json", NULL), 101);
    wst_expect_t(&promised, "hello", NULL);
    wst_open(&plain, wss_port, ta, "chorus.json");
    wst_expect_t(&plain, "hello", NULL);
    usleep(200 * 1000); /* both sessions' channel lists are loaded */
    for (int i = 0; i < 3; i++)
        api_must_drop(S.port, 201, "POST", path, ta,
                      json_pack("{s:s}", "text", api_p("held %d", i)));
    long long resumed_after = -1;
    assert_int_equal(read_through(&plain, ch, seen + 1, seen + 3, &resumed_after), 0);
    usleep(1500 * 1000);
    wst_expect_nothing(&promised, 100);
    char op[128];
    snprintf(op, sizeof op, "{\"op\":\"resume\",\"positions\":{\"%lld\":%lld}}", ch, seen);
    assert_int_equal(ws_send_text(&promised, op), 0);
    int resumed = read_through(&promised, ch, seen + 1, seen + 3, &resumed_after);
    if (resumed == 0)
        wst_expect_t(&promised, "resumed", NULL);
    ws_close(&promised);
    ws_close(&plain);
    free(ta);
}

/* The node's registry entry: url, connections, capacity, draining, and its id in the
 * set of nodes; refreshed every second. */
static void test_registry(void **state)
{
    (void)state;
    redisContext *rc = wst_redis(S.redis_url);
    long long uid;
    char *tok = api_new_user(S.port, "wss-reg", &uid);
    ws_client c;
    wst_open(&c, wss_port, tok, "chorus.json");
    wst_expect_t(&c, "hello", NULL);
    long long conns = 0;
    for (int64_t end = test_now_ms() + 3000; conns < 1; usleep(50000)) {
        redisReply *r = redisCommand(rc, "HGET chorus:wss:node:wss-test connections");
        conns = r && r->type == REDIS_REPLY_STRING ? atoll(r->str) : 0;
        freeReplyObject(r);
        if (conns < 1 && test_now_ms() > end)
            fail_msg("the registry did not count the session within 3 s");
    }
    redisReply *r = redisCommand(rc, "HGET chorus:wss:node:wss-test url");
    assert_string_equal(r->str, api_p("ws://127.0.0.1:%d/ws", wss_port));
    freeReplyObject(r);
    r = redisCommand(rc, "HGET chorus:wss:node:wss-test capacity");
    assert_true(atoll(r->str) > 0);
    freeReplyObject(r);
    r = redisCommand(rc, "HGET chorus:wss:node:wss-test draining");
    assert_string_equal(r->str, "0");
    freeReplyObject(r);
    r = redisCommand(rc, "PTTL chorus:wss:node:wss-test");
    assert_true(r->integer > 0 && r->integer <= WSSREG_RECENT_MS);
    freeReplyObject(r);
    r = redisCommand(rc, "ZSCORE chorus:wss:nodes wss-test");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    freeReplyObject(r);
    ws_close(&c);
    redisFree(rc);
    free(tok);
}

/* Another node (roles gateway,wss) on the test's database and Redis, as id, with
 * CHORUS_MAX_CONNECTIONS max_conns (NULL: the default); its WSS port. */
static int start_node(api_server *node, const char *id, const char *max_conns)
{
    *node = S;
    node->pg = NULL;
    int port = test_free_port();
    char env_wss[64], env_id[96], env_max[64];
    snprintf(env_wss, sizeof env_wss, "CHORUS_WSS_PORT=%d", port);
    snprintf(env_id, sizeof env_id, "CHORUS_NODE_ID=%s", id);
    snprintf(env_max, sizeof env_max, "CHORUS_MAX_CONNECTIONS=%s", max_conns ? max_conns : "");
    const char *env[] = {env_wss, env_id, max_conns ? env_max : NULL, NULL};
    api_server_start_roles(node, "gateway,wss", env);
    return port;
}

static long long registry_field(redisContext *rc, const char *node, const char *field)
{
    redisReply *r = redisCommand(rc, "HGET chorus:wss:node:%s %s", node, field);
    long long v = r && r->type == REDIS_REPLY_STRING ? atoll(r->str) : -1;
    freeReplyObject(r);
    return v;
}

/* Waits (at most 5 s) until node's registry entry counts lo..hi sessions. */
static void wait_registry_count(redisContext *rc, const char *node, long long lo, long long hi)
{
    for (int64_t end = test_now_ms() + 5000;; usleep(5 * 1000)) {
        long long n = registry_field(rc, node, "connections");
        if (n >= lo && n <= hi)
            return;
        if (test_now_ms() > end)
            fail_msg("the registry counts %lld sessions of %s after 5 s, not %lld..%lld", n,
                     node, lo, hi);
    }
}

/* Sessions that come fast reach the registry before its write of the next second: the
 * scaler starts a replica from that figure. Right after a write, five sessions open on
 * a node of capacity 100 (1 % is one session); the registry must count them well
 * before the next second's write, 1 s after the last. */
static void test_registry_follows_a_burst(void **state)
{
    (void)state;
    api_server burst;
    int port = start_node(&burst, "wss-burst", "100");
    redisContext *rc = wst_redis(S.redis_url);
    long long uid;
    char *tok = api_new_user(S.port, "wss-burst", &uid);
    for (int round = 0; round < 3; round++) {
        long long first = -1, at;
        int64_t end = test_now_ms() + 5000, written = 0;
        /* the moment of a write: updated_ms changes */
        while ((at = registry_field(rc, "wss-burst", "updated_ms")) == first || first < 0) {
            if (first < 0 && at > 0)
                first = at;
            if (test_now_ms() > end)
                fail_msg("the node wrote no registry entry within 5 s");
            usleep(5 * 1000);
        }
        written = test_now_ms();
        ws_client c[5];
        for (int i = 0; i < 5; i++) {
            wst_open(&c[i], port, tok, "chorus.json");
            wst_expect_t(&c[i], "hello", NULL);
        }
        wait_registry_count(rc, "wss-burst", 5, 5);
        int64_t took = test_now_ms() - written;
        print_message("round %d: 5 sessions in the registry %lld ms after its last write\n",
                      round, (long long)took);
        if (took >= 900)
            fail_msg("the registry counted the sessions %lld ms after its last write: at "
                     "the next second's write, not as they came", (long long)took);
        for (int i = 0; i < 5; i++)
            ws_close(&c[i]);
        wait_registry_count(rc, "wss-burst", 0, 0);
    }
    api_server_stop(&burst);
    redisFree(rc);
    free(tok);
}

/* Redis' count of EVAL calls so far. */
static long long eval_calls(redisContext *rc)
{
    redisReply *r = redisCommand(rc, "INFO commandstats");
    const char *p = r && r->str ? strstr(r->str, "cmdstat_eval:calls=") : NULL;
    long long n = p ? atoll(p + strlen("cmdstat_eval:calls=")) : 0;
    freeReplyObject(r);
    return n;
}

/* 200 users' only sessions close at once: each goes offline (its presence hash and its
 * place in the node's user set gone), through far fewer script calls than users. One
 * call per change was 13,000 commands pending per node when the 100k load test's
 * sessions closed together, more than Redis answered in 5 s. */
static void test_presence_changes_batched(void **state)
{
    (void)state;
    enum { N = 200 };
    static ws_client c[N];
    redisContext *rc = wst_redis(S.redis_url);
    int64_t t0 = test_now_ms();
    for (int i = 0; i < N; i++) {
        char sub[24];
        snprintf(sub, sizeof sub, "%d", 7000000 + i);
        char *tok = api_jwt_hs256(API_JWT_SECRET, sub, 0, 3600);
        wst_open(&c[i], wss_port, tok, "chorus.json");
        wst_expect_t(&c[i], "hello", NULL);
        free(tok);
    }
    for (int64_t end = test_now_ms() + 5000;; usleep(10 * 1000)) {
        redisReply *r = redisCommand(rc, "EXISTS chorus:presence:%d", 7000000 + N - 1);
        bool there = r && r->integer == 1;
        freeReplyObject(r);
        if (there)
            break;
        if (test_now_ms() > end)
            fail_msg("the last user was not online in Redis within 5 s");
    }
    print_message("opened in %lld ms\n", (long long)(test_now_ms() - t0));
    long long before = eval_calls(rc);
    for (int i = 0; i < N; i++)
        ws_close(&c[i]);
    for (int64_t end = test_now_ms() + 10000;; usleep(10 * 1000)) {
        int left = 0;
        for (int i = 0; i < N; i++) {
            redisReply *r = redisCommand(rc, "EXISTS chorus:presence:%d", 7000000 + i);
            left += r && r->integer == 1;
            freeReplyObject(r);
        }
        redisReply *r = redisCommand(rc, "SISMEMBER chorus:wss:users:wss-test %d", 7000000);
        left += r && r->integer == 1;
        freeReplyObject(r);
        if (left == 0)
            break;
        if (test_now_ms() > end)
            fail_msg("%d of %d users still online 10 s after their sessions closed", left, N);
    }
    long long calls = eval_calls(rc) - before;
    print_message("%d users went offline in %lld script calls (%lld ms in all)\n", N, calls,
                  (long long)(test_now_ms() - t0));
    if (calls >= N / 2)
        fail_msg("%lld script calls for %d presence changes: not batched", calls, N);
    redisFree(rc);
}

/* A node at its capacity (max_connections) closes new sessions with 4009. */
static void test_full_node_closes_4009(void **state)
{
    (void)state;
    api_server full; /* the same database, another process */
    int port = start_node(&full, "wss-full", "1");
    long long uid;
    char *tok = api_new_user(S.port, "wss-full", &uid);
    ws_client a, b;
    assert_int_equal(ws_connect(&a, port, api_p("/ws?token=%s", tok), "chorus.json", NULL), 101);
    wst_expect_t(&a, "hello", NULL);
    assert_int_equal(ws_connect(&b, port, api_p("/ws?token=%s", tok), "chorus.json", NULL), 101);
    wst_expect_close(&b, 4009, 5000);
    ws_close(&b);
    ws_close(&a);
    api_server_stop(&full);
    free(tok);
}

/* A node stopped with SIGTERM takes itself out of the registry before it exits, so no
 * gateway sends a client to it. Its entry would otherwise stay up to 3 s (its expiry):
 * the removal was written to the Redis client's buffer and freed unsent when the node
 * had no session to drain (a CI run got "live-d", stopped, from /realtime/connect). */
static void test_stopped_node_leaves_registry(void **state)
{
    (void)state;
    redisContext *rc = wst_redis(S.redis_url);
    for (int round = 0; round < 3; round++) {
        api_server gone;
        start_node(&gone, "wss-gone", NULL);
        bool listed = false;
        for (int64_t end = test_now_ms() + 5000; !listed; usleep(20 * 1000)) {
            redisReply *r = redisCommand(rc, "ZSCORE chorus:wss:nodes wss-gone");
            listed = r && r->type == REDIS_REPLY_STRING;
            freeReplyObject(r);
            if (!listed && test_now_ms() > end)
                fail_msg("the node did not register within 5 s");
        }
        api_server_stop(&gone);
        redisReply *r = redisCommand(rc, "EXISTS chorus:wss:node:wss-gone");
        assert_int_equal(r->integer, 0);
        freeReplyObject(r);
        r = redisCommand(rc, "ZSCORE chorus:wss:nodes wss-gone");
        assert_int_equal(r->type, REDIS_REPLY_NIL);
        freeReplyObject(r);
    }
    redisFree(rc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hello),
        cmocka_unit_test(test_authorization_header),
        cmocka_unit_test(test_bad_tokens_get_4001),
        cmocka_unit_test(test_ops_and_errors),
        cmocka_unit_test(test_msgpack_protocol),
        cmocka_unit_test(test_delivery_to_members_only),
        cmocka_unit_test(test_slow_consumer_is_closed_4008),
        cmocka_unit_test(test_resume),
        cmocka_unit_test(test_resume_promised),
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_registry_follows_a_burst),
        cmocka_unit_test(test_presence_changes_batched),
        cmocka_unit_test(test_full_node_closes_4009),
        cmocka_unit_test(test_stopped_node_leaves_registry),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
