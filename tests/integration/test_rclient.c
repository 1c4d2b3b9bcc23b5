/* test_rclient.c - the async Redis client against a real server (REDIS_URL).
 *
 * Every test runs its own ev loop through run_until(), which never waits past a
 * deadline, and counts callbacks to check that each accepted command is answered
 * exactly once: with a reply, or NULL when the connection went away. Keys carry the
 * pid because other test files share the server. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ev.h>

#include "chorus/buf.h"
#include "chorus/metrics.h"
#include "chorus/rclient.h"
#include "chorus/status.h"
#include "testutil.h"

/* ---- harness --------------------------------------------------------------------- */

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
}

/* Runs the loop until *flag is true or max_s seconds passed; returns *flag. The tick
 * timer makes each ev_run(EVRUN_ONCE) return often enough to check both. */
static bool run_until(struct ev_loop *loop, const bool *flag, double max_s)
{
    ev_timer tick;
    ev_timer_init(&tick, tick_cb, 0.005, 0.005);
    ev_timer_start(loop, &tick);
    ev_now_update(loop);
    ev_tstamp end = ev_now(loop) + max_s;
    while (!*flag && ev_now(loop) < end)
        ev_run(loop, EVRUN_ONCE);
    ev_timer_stop(loop, &tick);
    return *flag;
}

/* Runs the loop for s seconds, whatever happens. */
static void run_for(struct ev_loop *loop, double s)
{
    bool never = false;
    run_until(loop, &never, s);
}

static char url_buf[256];

static const char *redis_url(int db)
{
    char host[64];
    int port, d;
    const char *url = test_env("REDIS_URL");
    if (rclient_parse_url(url, host, sizeof host, &port, &d) != CHORUS_OK)
        fail_msg("REDIS_URL %s is not redis://IP:port[/db]", url);
    snprintf(url_buf, sizeof url_buf, "redis://%s:%d/%d", host, port, db);
    return url_buf;
}

static char *key(const char *what)
{
    static char k[8][128];
    static int next;
    char *p = k[next++ % 8];
    snprintf(p, sizeof k[0], "chorus-test:rclient:%d:%s", (int)getpid(), what);
    return p;
}

/* Connection state reports. */
typedef struct states {
    int ups;
    int downs;
    bool up;
    bool down;
} states;

static void state_cb(void *arg, bool connected)
{
    states *s = arg;
    if (connected) {
        s->ups++;
        s->up = true;
    } else {
        s->downs++;
        s->down = true;
    }
}

static rclient *client_new(struct ev_loop *loop, const char *name, const char *url,
                           int max_pending, int timeout_ms, states *st)
{
    rclient_opts o = {
        .url = url,
        .name = name,
        .max_pending = max_pending,
        .backoff_min_ms = 20,
        .backoff_max_ms = 200,
        .command_timeout_ms = timeout_ms,
    };
    rclient *c = rclient_new(loop, &o);
    assert_non_null(c);
    if (st) {
        memset(st, 0, sizeof *st);
        rclient_on_state(c, state_cb, st);
    }
    return c;
}

static rclient *connected_client(struct ev_loop *loop, const char *name, int db,
                                 int max_pending, int timeout_ms, states *st)
{
    rclient *c = client_new(loop, name, redis_url(db), max_pending, timeout_ms, st);
    assert_false(rclient_connected(c)); /* connecting is asynchronous */
    bool *flag = &st->up;
    assert_true(run_until(loop, flag, 5.0));
    assert_true(rclient_connected(c));
    return c;
}

/* One reply kept for inspection. */
typedef struct result {
    bool done;
    int calls;
    bool null;
    int type;
    long long integer;
    char str[256];
    size_t len;
} result;

static void result_cb(void *arg, redisReply *r)
{
    result *res = arg;
    res->calls++;
    res->done = true;
    res->null = r == NULL;
    if (!r)
        return;
    res->type = r->type;
    res->integer = r->integer;
    if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS ||
        r->type == REDIS_REPLY_ERROR) {
        res->len = r->len < sizeof res->str ? r->len : sizeof res->str;
        memcpy(res->str, r->str, res->len);
    }
}

/* Counts callbacks of many commands. */
typedef struct counter {
    int calls;
    int nulls;
    int want;
    bool all;
} counter;

static void count_cb(void *arg, redisReply *r)
{
    counter *n = arg;
    n->calls++;
    if (!r)
        n->nulls++;
    if (n->calls >= n->want)
        n->all = true;
}

static double metric(const char *name, const char *client, const char *kind)
{
    buf b;
    buf_init(&b, 0);
    assert_int_equal(metrics_render(&b), CHORUS_OK);
    char line[256];
    if (kind)
        snprintf(line, sizeof line, "%s{client=\"%s\",kind=\"%s\"} ", name, client, kind);
    else
        snprintf(line, sizeof line, "%s{client=\"%s\"} ", name, client);
    const char *p = strstr(b.data, line);
    double v = p ? strtod(p + strlen(line), NULL) : -1;
    buf_free(&b);
    return v;
}

static struct ev_loop *loop_new(void)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(loop);
    return loop;
}

/* ---- tests ------------------------------------------------------------------------ */

/* URLs: IPv4 literals only, optional port and db, nothing else. */
static void test_parse_url(void **state)
{
    (void)state;
    char host[64];
    int port, db;
    assert_int_equal(rclient_parse_url("redis://127.0.0.1:6380/3", host, sizeof host, &port,
                                       &db),
                     CHORUS_OK);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 6380);
    assert_int_equal(db, 3);
    assert_int_equal(rclient_parse_url("redis://10.0.0.1", host, sizeof host, &port, &db),
                     CHORUS_OK);
    assert_int_equal(port, 6379);
    assert_int_equal(db, 0);
    assert_int_equal(rclient_parse_url("redis://10.0.0.1:1/", host, sizeof host, &port, &db),
                     CHORUS_OK);
    assert_int_equal(db, 0);
    const char *bad[] = {
        "redis://localhost:6379",  "redis://redis.example.com:6379/0", "http://1.2.3.4:1",
        "redis://1.2.3.4:0",       "redis://1.2.3.4:65536",            "redis://1.2.3.4:x",
        "redis://1.2.3.4:6379/x",  "redis://1.2.3.4:6379/0?a=b",       "redis://:6379",
        "redis://1.2.3:6379",      "redis://u:p@1.2.3.4:6379",         "redis://[::1]:6379",
        "redis://1.2.3.4:6379/99999999999", "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(rclient_parse_url(bad[i], host, sizeof host, &port, &db), CHORUS_ERR);
    assert_int_equal(rclient_parse_url("redis://127.0.0.1:1", host, 5, &port, &db), CHORUS_ERR);

    struct ev_loop *loop = loop_new();
    rclient_opts o = {.url = "redis://localhost:6379", .name = "bad"};
    assert_null(rclient_new(loop, &o));
    o.url = "redis://127.0.0.1:1";
    o.max_pending = -1;
    assert_null(rclient_new(loop, &o));
    ev_loop_destroy(loop);
}

/* SET then GET; printf-style %b is binary-safe; the state callback reports one connect. */
static void test_set_get(void **state)
{
    (void)state;
    struct ev_loop *loop = loop_new();
    states st;
    rclient *c = connected_client(loop, "setget", 0, 100, 5000, &st);
    assert_int_equal(metric("chorus_redis_connected", "setget", NULL), 1);

    result set = {0}, get = {0}, missing = {0};
    assert_int_equal(
        rclient_command(c, result_cb, &set, "SET %s %b", key("sg"), "va\0lue", (size_t)6),
        CHORUS_OK);
    assert_int_equal(rclient_command(c, result_cb, &get, "GET %s", key("sg")), CHORUS_OK);
    assert_int_equal(rclient_command(c, result_cb, &missing, "GET %s", key("nope")), CHORUS_OK);
    assert_int_equal(rclient_pending(c), 3);
    assert_true(run_until(loop, &missing.done, 5.0));
    assert_int_equal(set.type, REDIS_REPLY_STATUS);
    assert_memory_equal(set.str, "OK", 2);
    assert_int_equal(get.type, REDIS_REPLY_STRING);
    assert_int_equal(get.len, 6);
    assert_memory_equal(get.str, "va\0lue", 6);
    assert_int_equal(missing.type, REDIS_REPLY_NIL);
    assert_int_equal(set.calls + get.calls + missing.calls, 3);
    assert_int_equal(rclient_pending(c), 0);

    /* an error reply is a reply, counted in the metrics */
    double before = metric("chorus_redis_errors_total", "setget", "reply");
    result err = {0};
    assert_int_equal(rclient_command(c, result_cb, &err, "INCR %s", key("sg")), CHORUS_OK);
    assert_true(run_until(loop, &err.done, 5.0));
    assert_int_equal(err.type, REDIS_REPLY_ERROR);
    assert_true(metric("chorus_redis_errors_total", "setget", "reply") == before + 1);

    /* a NULL callback is allowed (fire and forget) */
    assert_int_equal(rclient_command(c, NULL, NULL, "DEL %s", key("sg")), CHORUS_OK);
    result ping = {0};
    assert_int_equal(rclient_command(c, result_cb, &ping, "PING"), CHORUS_OK);
    assert_true(run_until(loop, &ping.done, 5.0));
    assert_int_equal(st.ups, 1);
    assert_int_equal(st.downs, 0);
    rclient_free(c);
    assert_int_equal(metric("chorus_redis_connected", "setget", NULL), 0);
    ev_loop_destroy(loop);
}

/* Commands that would break one-reply-per-command, and empty commands, are refused. */
static void test_refused_commands(void **state)
{
    (void)state;
    struct ev_loop *loop = loop_new();
    states st;
    rclient *c = connected_client(loop, "refuse", 0, 100, 5000, &st);
    result r = {0};
    assert_int_equal(rclient_command(c, result_cb, &r, "SUBSCRIBE x"), CHORUS_ERR);
    assert_int_equal(rclient_command(c, result_cb, &r, "psubscribe x*"), CHORUS_ERR);
    assert_int_equal(rclient_command(c, result_cb, &r, "MONITOR"), CHORUS_ERR);
    assert_int_equal(rclient_command(c, result_cb, &r, ""), CHORUS_ERR);
    const char *argv[] = {"Unsubscribe"};
    assert_int_equal(rclient_command_argv(c, result_cb, &r, 1, argv, NULL), CHORUS_ERR);
    assert_int_equal(rclient_command_argv(c, result_cb, &r, 0, argv, NULL), CHORUS_ERR);
    assert_int_equal(rclient_pending(c), 0);
    run_for(loop, 0.05);
    assert_int_equal(r.calls, 0);
    rclient_free(c);
    ev_loop_destroy(loop);
}

typedef struct pipeline {
    long long next; /* the INCR result expected next */
    int calls;
    int wrong;
    bool all;
} pipeline;

static void pipeline_cb(void *arg, redisReply *r)
{
    pipeline *p = arg;
    p->calls++;
    if (!r || r->type != REDIS_REPLY_INTEGER || r->integer != p->next)
        p->wrong++;
    p->next++;
    if (p->calls == 10000)
        p->all = true;
}

/* 10000 commands issued in one loop turn are all answered, in order. */
static void test_pipeline(void **state)
{
    (void)state;
    struct ev_loop *loop = loop_new();
    states st;
    rclient *c = connected_client(loop, "pipeline", 0, 10000, 5000, &st);
    result del = {0};
    assert_int_equal(rclient_command(c, result_cb, &del, "DEL %s", key("pipe")), CHORUS_OK);
    assert_true(run_until(loop, &del.done, 5.0));

    pipeline p = {.next = 1};
    for (int i = 0; i < 10000; i++)
        assert_int_equal(rclient_command(c, pipeline_cb, &p, "INCR %s", key("pipe")), CHORUS_OK);
    assert_int_equal(rclient_pending(c), 10000);
    assert_int_equal(metric("chorus_redis_pending", "pipeline", NULL), 10000);
    assert_int_equal(p.calls, 0); /* nothing runs before the loop does */
    assert_true(run_until(loop, &p.all, 20.0));
    assert_int_equal(p.calls, 10000);
    assert_int_equal(p.wrong, 0);
    assert_int_equal(rclient_pending(c), 0);
    assert_int_equal(metric("chorus_redis_pending", "pipeline", NULL), 0);
    rclient_command(c, NULL, NULL, "DEL %s", key("pipe"));
    run_for(loop, 0.02);
    rclient_free(c);
    ev_loop_destroy(loop);
}

/* argv commands carry NUL, CR/LF and high bytes unchanged, in keys and values. */
static void test_binary_argv(void **state)
{
    (void)state;
    struct ev_loop *loop = loop_new();
    states st;
    rclient *c = connected_client(loop, "binary", 0, 100, 5000, &st);
    char k[160];
    size_t klen = (size_t)snprintf(k, sizeof k, "%s", key("bin"));
    memcpy(k + klen, "\0\r\n", 3);
    klen += 3;
    const char val[] = {'a', '\0', '\r', '\n', (char)0xff, (char)0x80, '$', '*', 'z'};
    const char *set[] = {"SET", k, val};
    const size_t setlen[] = {3, klen, sizeof val};
    const char *get[] = {"GET", k};
    const size_t getlen[] = {3, klen};
    result rs = {0}, rg = {0}, rd = {0};
    assert_int_equal(rclient_command_argv(c, result_cb, &rs, 3, set, setlen), CHORUS_OK);
    assert_int_equal(rclient_command_argv(c, result_cb, &rg, 2, get, getlen), CHORUS_OK);
    const char *del[] = {"DEL", k};
    assert_int_equal(rclient_command_argv(c, result_cb, &rd, 2, del, getlen), CHORUS_OK);
    assert_true(run_until(loop, &rd.done, 5.0));
    assert_int_equal(rg.type, REDIS_REPLY_STRING);
    assert_int_equal(rg.len, sizeof val);
    assert_memory_equal(rg.str, val, sizeof val);
    assert_int_equal(rd.integer, 1); /* the binary key was the one stored */
    rclient_free(c);
    ev_loop_destroy(loop);
}

/* At max_pending the next command gets CHORUS_AGAIN, and is accepted again later. */
static void test_max_pending(void **state)
{
    (void)state;
    struct ev_loop *loop = loop_new();
    states st;
    rclient *c = connected_client(loop, "maxpend", 0, 5, 5000, &st);
    counter n = {.want = 5};
    for (int i = 0; i < 5; i++)
        assert_int_equal(rclient_command(c, count_cb, &n, "PING"), CHORUS_OK);
    double refused = metric("chorus_redis_errors_total", "maxpend", "refused");
    result extra = {0};
    assert_int_equal(rclient_command(c, result_cb, &extra, "PING"), CHORUS_AGAIN);
    const char *argv[] = {"PING"};
    assert_int_equal(rclient_command_argv(c, result_cb, &extra, 1, argv, NULL), CHORUS_AGAIN);
    assert_true(metric("chorus_redis_errors_total", "maxpend", "refused") == refused + 2);
    assert_int_equal(rclient_pending(c), 5);
    assert_true(run_until(loop, &n.all, 5.0));
    assert_int_equal(n.calls, 5);
    assert_int_equal(n.nulls, 0);
    assert_int_equal(extra.calls, 0); /* a refused command never calls back */
    assert_int_equal(rclient_command(c, result_cb, &extra, "PING"), CHORUS_OK);
    assert_true(run_until(loop, &extra.done, 5.0));
    assert_int_equal(extra.calls, 1);
    rclient_free(c);
    ev_loop_destroy(loop);
}

/* CLIENT KILL from another connection: the pending callbacks get NULL, the state
 * callback reports the loss, and the client reconnects by itself and works again. */
static void test_server_kill(void **state)
{
    (void)state;
    struct ev_loop *loop = loop_new();
    states sa, sb;
    rclient *a = connected_client(loop, "killed", 0, 100, 10000, &sa);
    rclient *b = connected_client(loop, "killer", 0, 100, 10000, &sb);

    result id = {0};
    assert_int_equal(rclient_command(a, result_cb, &id, "CLIENT ID"), CHORUS_OK);
    assert_true(run_until(loop, &id.done, 5.0));
    assert_int_equal(id.type, REDIS_REPLY_INTEGER);

    /* a blocking pop keeps commands pending on a; a GET waits behind it */
    result blpop = {0}, behind = {0};
    assert_int_equal(rclient_command(a, result_cb, &blpop, "BLPOP %s 0", key("kill-empty")),
                     CHORUS_OK);
    assert_int_equal(rclient_command(a, result_cb, &behind, "GET %s", key("kill-x")), CHORUS_OK);
    run_for(loop, 0.1);
    assert_int_equal(rclient_pending(a), 2);

    result kill = {0};
    assert_int_equal(rclient_command(b, result_cb, &kill, "CLIENT KILL ID %lld", id.integer),
                     CHORUS_OK);
    assert_true(run_until(loop, &sa.down, 5.0));
    assert_true(run_until(loop, &kill.done, 5.0));
    assert_int_equal(kill.integer, 1);
    assert_int_equal(blpop.calls, 1);
    assert_true(blpop.null);
    assert_int_equal(behind.calls, 1);
    assert_true(behind.null);
    assert_int_equal(sa.downs, 1);
    assert_int_equal(rclient_pending(a), 0);

    /* down: refused, never queued */
    result early = {0};
    if (!rclient_connected(a))
        assert_int_equal(rclient_command(a, result_cb, &early, "PING"), CHORUS_AGAIN);

    sa.up = false;
    assert_true(run_until(loop, &sa.up, 5.0));
    assert_int_equal(sa.ups, 2);
    assert_true(metric("chorus_redis_reconnects_total", "killed", NULL) >= 1);
    result after = {0};
    assert_int_equal(rclient_command(a, result_cb, &after, "SET %s ok", key("kill-x")),
                     CHORUS_OK);
    assert_true(run_until(loop, &after.done, 5.0));
    assert_false(after.null);
    assert_memory_equal(after.str, "OK", 2);
    assert_int_equal(early.calls, 0);
    rclient_command(a, NULL, NULL, "DEL %s", key("kill-x"));
    run_for(loop, 0.02);
    rclient_free(a);
    rclient_free(b);
    ev_loop_destroy(loop);
}

/* Nobody listens: the client is not connected, refuses commands, retries with backoff
 * and the loop keeps running. */
static void test_closed_port(void **state)
{
    (void)state;
    struct ev_loop *loop = loop_new();
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", test_free_port());
    states st;
    rclient *c = client_new(loop, "closed", url, 10, 1000, &st);
    result r = {0};
    int64_t t0 = test_now_ms();
    run_for(loop, 0.6);
    assert_true(test_now_ms() - t0 < 3000); /* never blocked */
    assert_false(rclient_connected(c));
    assert_int_equal(rclient_command(c, result_cb, &r, "PING"), CHORUS_AGAIN);
    assert_int_equal(rclient_pending(c), 0);
    /* backoff 20..200 ms with jitter: several attempts in 600 ms, not hundreds */
    double fails = metric("chorus_redis_errors_total", "closed", "connect");
    assert_true(fails >= 3);
    assert_true(fails <= 40);
    assert_int_equal(st.ups + st.downs, 0);
    assert_int_equal(metric("chorus_redis_connected", "closed", NULL), 0);
    rclient_free(c);
    assert_int_equal(r.calls, 0);
    ev_loop_destroy(loop);
}

/* A silent server: no reply for command_timeout_ms while a command is pending drops the
 * connection (the callback gets NULL) and the client reconnects. Idle time alone does
 * not trigger it. */
static void test_watchdog(void **state)
{
    (void)state;
    struct ev_loop *loop = loop_new();
    states st;
    rclient *c = connected_client(loop, "watchdog", 0, 100, 300, &st);

    run_for(loop, 0.5); /* idle longer than the timeout */
    result ping = {0};
    assert_int_equal(rclient_command(c, result_cb, &ping, "PING"), CHORUS_OK);
    assert_true(run_until(loop, &ping.done, 5.0));
    assert_false(ping.null);
    assert_int_equal(st.downs, 0);

    /* BLPOP with timeout 0 on an empty list: the server says nothing */
    result blpop = {0};
    int64_t t0 = test_now_ms();
    assert_int_equal(rclient_command(c, result_cb, &blpop, "BLPOP %s 0", key("wd-empty")),
                     CHORUS_OK);
    assert_true(run_until(loop, &blpop.done, 5.0));
    int64_t waited = test_now_ms() - t0;
    assert_true(blpop.null);
    assert_int_equal(blpop.calls, 1);
    assert_true(waited >= 250);
    assert_true(waited < 2000);
    assert_int_equal(st.downs, 1);

    st.up = false;
    assert_true(run_until(loop, &st.up, 5.0));
    result again = {0};
    assert_int_equal(rclient_command(c, result_cb, &again, "PING"), CHORUS_OK);
    assert_true(run_until(loop, &again.done, 5.0));
    assert_false(again.null);
    run_for(loop, 0.05);
    assert_int_equal(blpop.calls, 1);
    rclient_free(c);
    ev_loop_destroy(loop);
}

/* A loop that stalls past the timeout (a callback ran long, as on a starved host) while
 * the reply arrives: the reply waits in the socket, and libev runs the expired watchdog
 * before that iteration's I/O. The command must get its reply, not a drop. */
static void stall_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    usleep(600 * 1000); /* twice the command timeout */
    *(bool *)w->data = true;
}

static void test_late_loop_is_not_a_silent_server(void **state)
{
    (void)state;
    struct ev_loop *loop = loop_new();
    states st;
    rclient *c = connected_client(loop, "late", 0, 100, 300, &st);

    for (int round = 0; round < 3; round++) {
        result blpop = {0};
        bool stalled = false;
        ev_timer stall;
        ev_timer_init(&stall, stall_cb, 0.02, 0.);
        stall.data = &stalled;
        /* Redis answers (nil) after 100 ms: during the stall, which starts at 20 ms */
        assert_int_equal(rclient_command(c, result_cb, &blpop, "BLPOP %s 0.1", key("late")),
                         CHORUS_OK);
        ev_timer_start(loop, &stall);
        assert_true(run_until(loop, &blpop.done, 5.0));
        assert_true(stalled);
        assert_false(blpop.null);
        assert_int_equal(blpop.type, REDIS_REPLY_NIL);
        ev_timer_stop(loop, &stall);
    }
    assert_int_equal(st.downs, 0);
    rclient_free(c);
    ev_loop_destroy(loop);
}

/* A peer that accepts TCP but never speaks (a listen socket nobody accepts from): the
 * SELECT goes unanswered, the watchdog recycles the connection, the client stays down
 * and keeps trying. */
static void test_silent_handshake(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 16), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/1", ntohs(a.sin_port));

    struct ev_loop *loop = loop_new();
    states st;
    rclient *c = client_new(loop, "silent", url, 10, 150, &st);
    int64_t t0 = test_now_ms();
    run_for(loop, 0.8);
    assert_true(test_now_ms() - t0 < 3000);
    assert_false(rclient_connected(c));
    assert_int_equal(st.ups, 0);
    assert_true(metric("chorus_redis_errors_total", "silent", "connect") >= 2);
    result r = {0};
    assert_int_equal(rclient_command(c, result_cb, &r, "PING"), CHORUS_AGAIN);
    rclient_free(c);
    ev_loop_destroy(loop);
    close(fd);
}

/* rclient_free with commands in flight calls each callback once, with NULL, before it
 * returns. */
static void test_free_in_flight(void **state)
{
    (void)state;
    struct ev_loop *loop = loop_new();
    states st;
    rclient *c = connected_client(loop, "freeflight", 0, 1000, 5000, &st);
    counter n = {.want = 101};
    assert_int_equal(rclient_command(c, count_cb, &n, "BLPOP %s 0", key("ff-empty")), CHORUS_OK);
    for (int i = 0; i < 100; i++)
        assert_int_equal(rclient_command(c, count_cb, &n, "GET %s", key("ff")), CHORUS_OK);
    run_for(loop, 0.05); /* sent; the BLPOP holds all of them */
    rclient_free(c);
    assert_int_equal(n.calls, 101);
    assert_int_equal(n.nulls, 101);
    assert_int_equal(st.downs, 0); /* no state report after free */
    run_for(loop, 0.05);
    assert_int_equal(n.calls, 101);
    ev_loop_destroy(loop);
}

typedef struct freer {
    rclient *c;
    int calls;
    int nulls;
    int free_at;
    bool all;
    int want;
} freer;

static void freer_cb(void *arg, redisReply *r)
{
    freer *f = arg;
    f->calls++;
    if (!r)
        f->nulls++;
    if (f->calls == f->free_at) {
        rclient_free(f->c);
        assert_int_equal(rclient_command(f->c, freer_cb, f, "PING"), CHORUS_AGAIN);
        assert_false(rclient_connected(f->c));
    }
    if (f->calls == f->want)
        f->all = true;
}

static void free_on_up(void *arg, bool connected)
{
    freer *f = arg;
    if (connected) {
        f->calls++;
        rclient_free(f->c);
        f->all = true;
    }
}

/* rclient_free from inside a reply callback and from inside the state callback is
 * safe: the remaining callbacks run once with NULL, the memory goes (LSan checks). */
static void test_free_in_callback(void **state)
{
    (void)state;
    struct ev_loop *loop = loop_new();
    states st;
    freer f = {.free_at = 10, .want = 50};
    f.c = connected_client(loop, "freecb", 0, 100, 5000, &st);
    for (int i = 0; i < 50; i++)
        assert_int_equal(rclient_command(f.c, freer_cb, &f, "PING"), CHORUS_OK);
    assert_true(run_until(loop, &f.all, 5.0));
    assert_int_equal(f.calls, 50);
    assert_int_equal(f.nulls, 40);
    run_for(loop, 0.05); /* the deferred free runs here */
    assert_int_equal(f.calls, 50);

    freer g = {0};
    rclient_opts o = {.url = redis_url(0), .name = "freeup", .max_pending = 10};
    g.c = rclient_new(loop, &o);
    assert_non_null(g.c);
    rclient_on_state(g.c, free_on_up, &g);
    assert_true(run_until(loop, &g.all, 5.0));
    run_for(loop, 0.05);
    assert_int_equal(g.calls, 1);
    ev_loop_destroy(loop);
}

/* /db selects the database before the client says it is connected; a database the
 * server does not have keeps it down. */
static void test_select_db(void **state)
{
    (void)state;
    struct ev_loop *loop = loop_new();
    states s5, s0;
    rclient *c5 = connected_client(loop, "db5", 5, 100, 5000, &s5);
    rclient *c0 = connected_client(loop, "db0", 0, 100, 5000, &s0);
    result set = {0}, get5 = {0}, get0 = {0};
    assert_int_equal(rclient_command(c5, result_cb, &set, "SET %s five", key("db")), CHORUS_OK);
    assert_true(run_until(loop, &set.done, 5.0));
    assert_int_equal(rclient_command(c5, result_cb, &get5, "GET %s", key("db")), CHORUS_OK);
    assert_int_equal(rclient_command(c0, result_cb, &get0, "GET %s", key("db")), CHORUS_OK);
    assert_true(run_until(loop, &get5.done, 5.0));
    assert_true(run_until(loop, &get0.done, 5.0));
    assert_memory_equal(get5.str, "five", 4);
    assert_int_equal(get0.type, REDIS_REPLY_NIL);
    rclient_command(c5, NULL, NULL, "DEL %s", key("db"));
    run_for(loop, 0.02);
    rclient_free(c5);
    rclient_free(c0);

    char url[128];
    snprintf(url, sizeof url, "%.*s/100000", (int)(strrchr(redis_url(0), '/') - url_buf),
             url_buf);
    states sx;
    rclient *cx = client_new(loop, "dbbad", url, 10, 5000, &sx);
    run_for(loop, 0.4);
    assert_false(rclient_connected(cx));
    assert_int_equal(sx.ups, 0);
    assert_true(metric("chorus_redis_errors_total", "dbbad", "connect") >= 2);
    rclient_free(cx);
    ev_loop_destroy(loop);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_url),
        cmocka_unit_test(test_set_get),
        cmocka_unit_test(test_refused_commands),
        cmocka_unit_test(test_pipeline),
        cmocka_unit_test(test_binary_argv),
        cmocka_unit_test(test_max_pending),
        cmocka_unit_test(test_server_kill),
        cmocka_unit_test(test_closed_port),
        cmocka_unit_test(test_watchdog),
        cmocka_unit_test(test_late_loop_is_not_a_silent_server),
        cmocka_unit_test(test_silent_handshake),
        cmocka_unit_test(test_free_in_flight),
        cmocka_unit_test(test_free_in_callback),
        cmocka_unit_test(test_select_db),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    metrics_reset();
    return rc;
}
