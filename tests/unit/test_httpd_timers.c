/* test_httpd_timers.c - the cost of lws' timer list as WebSocket sessions pile up.
 *
 * lws 4.1 keeps every pending timer of a thread in one list, sorted by due time, and
 * inserts with lws_dll2_add_sorted: a walk from the head to the first later entry.
 * Its default idle policy gives each established WebSocket a validity timer 300 s out,
 * later than every other, so each new session walked the whole list: quadratic. In the
 * 100k load test that walk was 29 % of the machine during the ramp (perf), and a node
 * with 18,000 sessions took a 19th thousand about 20 times slower than its first.
 * httpd_idle_policy turns that timer off (the WSS node keeps its own idle timeout).
 *
 * The test counts the walk itself, not time: this executable defines
 * lws_dll2_add_sorted, so lws' own calls (through its PLT) come here; each call is
 * passed on to the library's function and then charged with the number of entries
 * ahead of the new one. A server thread runs an httpd on its own loop; the test opens
 * SESSIONS WebSockets one after another and compares the walk per session. */
#include <dlfcn.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <ev.h>
#include <libwebsockets.h>

#include "chorus/httpd.h"
#include "chorus/log.h"
#include "testutil.h"
#include "wsclient.h"

#define SESSIONS 400

static atomic_long inserts;
static atomic_long walked;

typedef void (*add_sorted_fn)(lws_dll2_t *, lws_dll2_owner_t *,
                              int (*)(const lws_dll2_t *, const lws_dll2_t *));

void lws_dll2_add_sorted(lws_dll2_t *d, lws_dll2_owner_t *own,
                         int (*compare)(const lws_dll2_t *d, const lws_dll2_t *i))
{
    static add_sorted_fn real;
    if (!real)
        real = (add_sorted_fn)dlsym(RTLD_NEXT, "lws_dll2_add_sorted");
    real(d, own, compare);
    long ahead = 0;
    for (const lws_dll2_t *p = own->head; p && p != d; p = p->next)
        ahead++;
    atomic_fetch_add(&inserts, 1);
    atomic_fetch_add(&walked, ahead);
}

/* ---- the server thread ------------------------------------------------------------ */

typedef struct server {
    struct ev_loop *loop;
    struct lws_context *lws;
    httpd *h;
    ev_async stop;
    pthread_t thread;
    int port;
    atomic_int established;
    atomic_bool ready;
} server;

static int on_ws(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                 size_t len)
{
    (void)in;
    (void)len;
    server *s = httpd_ws_arg(wsi);
    if (reason == LWS_CALLBACK_ESTABLISHED)
        atomic_fetch_add(&s->established, 1);
    if (reason == LWS_CALLBACK_CLOSED)
        *(void **)user = NULL;
    return 0;
}

static void on_stop(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)revents;
    server *s = w->data;
    ev_async_stop(loop, w);
    lws_context_destroy(s->lws); /* with a foreign loop: the loop finishes it */
}

static void *serve(void *arg)
{
    server *s = arg;
    s->loop = ev_loop_new(EVFLAG_AUTO);
    void *loops[] = {s->loop};
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS | LWS_SERVER_OPTION_LIBEV;
    info.foreign_loops = loops;
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.pcontext = &s->lws;
    s->lws = lws_create_context(&info);
    if (s->lws) {
        httpd_opts o = {.name = "timers", .port = s->port};
        s->h = httpd_new(s->lws, &o);
    }
    if (s->h) {
        httpd_set_ws_handler(s->h, on_ws, s);
        ev_async_init(&s->stop, on_stop);
        s->stop.data = s;
        ev_async_start(s->loop, &s->stop);
    }
    atomic_store(&s->ready, true);
    if (s->h)
        ev_run(s->loop, 0);
    lws_context_destroy(s->lws);
    httpd_free(s->h);
    ev_loop_destroy(s->loop);
    return NULL;
}

static void server_start(server *s)
{
    memset(s, 0, sizeof *s);
    s->port = test_free_port();
    assert_int_equal(pthread_create(&s->thread, NULL, serve, s), 0);
    while (!atomic_load(&s->ready))
        usleep(1000);
    assert_non_null(s->h);
}

static void server_stop(server *s)
{
    ev_async_send(s->loop, &s->stop);
    assert_int_equal(pthread_join(s->thread, NULL), 0);
}

/* ---- tests ------------------------------------------------------------------------ */

/* SESSIONS WebSockets, all held open: the timer-list walk per session must not grow
 * with the sessions already there. The last hundred cost no more than the first
 * hundred (plus a little), and far less than the whole list. */
static void test_session_opens_do_not_walk_every_session(void **state)
{
    (void)state;
    server s;
    server_start(&s);
    static ws_client c[SESSIONS];
    long walk_at[SESSIONS + 1];
    for (int i = 0; i < SESSIONS; i++) {
        walk_at[i] = atomic_load(&walked);
        assert_int_equal(ws_connect(&c[i], s.port, "/ws", "chorus.json", NULL), 101);
    }
    for (int64_t end = test_now_ms() + 5000; atomic_load(&s.established) < SESSIONS;)
        if (test_now_ms() > end)
            fail_msg("%d of %d sessions established", atomic_load(&s.established), SESSIONS);
    usleep(50 * 1000); /* the last one's timers are set after its 101 */
    walk_at[SESSIONS] = atomic_load(&walked);

    long first = walk_at[100] - walk_at[0];
    long last = walk_at[SESSIONS] - walk_at[SESSIONS - 100];
    print_message("timer inserts %ld, entries walked: first 100 sessions %ld, last 100 %ld\n",
                  atomic_load(&inserts), first, last);
    /* the hook is live: every session sets lws timers while its handshake runs */
    assert_true(atomic_load(&inserts) >= SESSIONS);
    /* quadratic would be ~300 entries a session for the last hundred */
    if (last > first + 10 * 100)
        fail_msg("the last 100 sessions walked %ld timer entries, the first 100 %ld: each "
                 "new session walks the others' timers", last, first);
    for (int i = 0; i < SESSIONS; i++)
        ws_close(&c[i]);
    server_stop(&s);
}

int main(void)
{
    log_init(LOG_LVL_WARN, false, "test");
    lws_set_log_level(LLL_ERR, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_session_opens_do_not_walk_every_session),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
