/* test_workpool.c - the worker pool on a real libev loop: results, threads, the queue
 * bound, the loop's lifetime, and what free does with jobs still in the pool.
 *
 * work functions run on pool threads, where cmocka's asserts (longjmp) must not be
 * used: they only record what happened, and the test checks it on the main thread. */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "chorus/buf.h"
#include "chorus/metrics.h"
#include "chorus/status.h"
#include "chorus/workpool.h"
#include "testutil.h"

/* Ends a test that hangs (a loop that never returns) well before ctest's timeout. */
#define WATCHDOG_S 60

typedef struct job {
    int n;
    unsigned long result;       /* written by work */
    bool ran;                   /* written by work */
    pthread_t worker;           /* written by work */
    int done_calls;
    bool cancelled;
    bool done_on_main;
    int done_seq;               /* order in which done was called */
} job;

static pthread_t main_thread;
static int done_seq;

/* A gate that work functions can wait on, with a flag saying a job reached it. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool open;
    int arrived;
    int ran;                    /* jobs whose work ran, for tests that poll it */
} gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0, 0};

static int setup(void **state)
{
    (void)state;
    main_thread = pthread_self();
    done_seq = 0;
    gate.open = false;
    gate.arrived = 0;
    gate.ran = 0;
    alarm(WATCHDOG_S);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    alarm(0);
    metrics_reset();
    return 0;
}

static unsigned long sum_squares(int n)
{
    unsigned long s = 0;
    for (int i = 1; i <= n; i++)
        s += (unsigned long)i * (unsigned long)i;
    return s;
}

static void mark_ran(job *j)
{
    j->ran = true;
    j->worker = pthread_self();
    pthread_mutex_lock(&gate.mu);
    gate.ran++;
    pthread_mutex_unlock(&gate.mu);
}

static void work_compute(void *arg)
{
    job *j = arg;
    j->result = sum_squares(j->n);
    mark_ran(j);
}

/* Blocks until the gate opens. */
static void work_gated(void *arg)
{
    pthread_mutex_lock(&gate.mu);
    gate.arrived++;
    pthread_cond_broadcast(&gate.cond);
    while (!gate.open)
        pthread_cond_wait(&gate.cond, &gate.mu);
    pthread_mutex_unlock(&gate.mu);
    work_compute(arg);
}

static void on_done(void *arg, bool cancelled)
{
    job *j = arg;
    j->done_calls++;
    j->cancelled = cancelled;
    j->done_on_main = pthread_equal(pthread_self(), main_thread);
    j->done_seq = done_seq++;
}

static void wait_arrived(int n)
{
    pthread_mutex_lock(&gate.mu);
    while (gate.arrived < n)
        pthread_cond_wait(&gate.cond, &gate.mu);
    pthread_mutex_unlock(&gate.mu);
}

static void gate_open(void)
{
    pthread_mutex_lock(&gate.mu);
    gate.open = true;
    pthread_cond_broadcast(&gate.cond);
    pthread_mutex_unlock(&gate.mu);
}

static void *open_gate_later(void *arg)
{
    (void)arg;
    struct timespec ts = {0, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
    gate_open();
    return NULL;
}

static bool rendered_has(const char *line)
{
    buf b;
    buf_init(&b, 0);
    assert_int_equal(metrics_render(&b), CHORUS_OK);
    bool found = strstr(b.data, line) != NULL;
    if (!found)
        fprintf(stderr, "missing '%s' in:\n%s", line, b.data);
    buf_free(&b);
    return found;
}

/* 100 jobs on 4 threads: every result is right, work ran off the loop thread, done ran
 * once on it, and ev_run did not return before the last done (pending jobs hold the
 * loop). */
static void test_hundred_jobs(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    workpool *p = workpool_new(loop, "hundred", 4, 100);
    assert_non_null(p);
    static job jobs[100];
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < 100; i++) {
        jobs[i].n = 1000 + i;
        assert_int_equal(workpool_submit(p, work_compute, on_done, &jobs[i]), CHORUS_OK);
    }
    /* done never runs inside submit. */
    for (int i = 0; i < 100; i++)
        assert_int_equal(jobs[i].done_calls, 0);
    ev_run(loop, 0);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(jobs[i].done_calls, 1);
        assert_false(jobs[i].cancelled);
        assert_true(jobs[i].done_on_main);
        assert_true(jobs[i].ran);
        assert_false(pthread_equal(jobs[i].worker, main_thread));
        assert_true(jobs[i].result == sum_squares(jobs[i].n));
    }
    assert_true(rendered_has("chorus_workpool_jobs_total{pool=\"hundred\"} 100\n"));
    assert_true(rendered_has("chorus_workpool_queue_length{pool=\"hundred\"} 0\n"));
    workpool_free(p);
    ev_loop_destroy(loop);
}

/* An idle pool does not keep the loop alive: ev_run returns at once. */
static void test_idle_pool_lets_loop_exit(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    workpool *p = workpool_new(loop, "idle", 2, 4);
    assert_non_null(p);
    ev_run(loop, 0); /* would hang (watchdog) if the ev_async held the loop */
    job j = {.n = 10};
    assert_int_equal(workpool_submit(p, work_compute, on_done, &j), CHORUS_OK);
    ev_run(loop, 0);
    assert_int_equal(j.done_calls, 1);
    ev_run(loop, 0); /* idle again */
    workpool_free(p);
    ev_loop_destroy(loop);
}

/* With one thread busy, queue_max jobs may wait; the next submit gets CHORUS_AGAIN and
 * its done is never called. Once the queue drains, submits are accepted again. */
static void test_queue_bound(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    workpool *p = workpool_new(loop, "bound", 1, 2);
    assert_non_null(p);
    job j[6];
    memset(j, 0, sizeof j);
    assert_int_equal(workpool_submit(p, work_gated, on_done, &j[0]), CHORUS_OK);
    wait_arrived(1); /* j[0] is running, so it no longer counts as waiting */
    assert_int_equal(workpool_submit(p, work_compute, on_done, &j[1]), CHORUS_OK);
    assert_int_equal(workpool_submit(p, work_compute, on_done, &j[2]), CHORUS_OK);
    assert_int_equal(workpool_submit(p, work_compute, on_done, &j[3]), CHORUS_AGAIN);
    assert_int_equal(workpool_submit(p, work_compute, on_done, &j[4]), CHORUS_AGAIN);
    assert_true(rendered_has("chorus_workpool_queue_length{pool=\"bound\"} 2\n"));
    gate_open();
    ev_run(loop, 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(j[i].done_calls, 1);
        assert_false(j[i].cancelled);
    }
    for (int i = 3; i < 5; i++) {
        assert_int_equal(j[i].done_calls, 0);
        assert_false(j[i].ran);
    }
    assert_int_equal(workpool_submit(p, work_compute, on_done, &j[5]), CHORUS_OK);
    ev_run(loop, 0);
    assert_int_equal(j[5].done_calls, 1);
    assert_true(rendered_has("chorus_workpool_rejected_total{pool=\"bound\"} 2\n"));
    assert_true(rendered_has("chorus_workpool_jobs_total{pool=\"bound\"} 4\n"));
    assert_true(rendered_has("chorus_workpool_queue_length{pool=\"bound\"} 0\n"));
    workpool_free(p);
    ev_loop_destroy(loop);
}

/* free while one job runs and four wait: it waits for the running one (done with
 * cancelled false, first), then reports the four as cancelled in submission order, on
 * this thread, before it returns; their work never runs. */
static void test_free_cancels_waiting(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    workpool *p = workpool_new(loop, "cancel", 1, 10);
    assert_non_null(p);
    job j[5];
    memset(j, 0, sizeof j);
    assert_int_equal(workpool_submit(p, work_gated, on_done, &j[0]), CHORUS_OK);
    wait_arrived(1);
    for (int i = 1; i < 5; i++)
        assert_int_equal(workpool_submit(p, work_compute, on_done, &j[i]), CHORUS_OK);
    /* The running job can only end after free has told the thread to stop: the gate
     * opens 200 ms from now, while free is blocked joining. */
    pthread_t opener;
    assert_int_equal(pthread_create(&opener, NULL, open_gate_later, NULL), 0);
    workpool_free(p);
    pthread_join(opener, NULL);
    assert_int_equal(j[0].done_calls, 1);
    assert_false(j[0].cancelled);
    assert_true(j[0].ran);
    assert_int_equal(j[0].done_seq, 0);
    for (int i = 1; i < 5; i++) {
        assert_int_equal(j[i].done_calls, 1);
        assert_true(j[i].cancelled);
        assert_false(j[i].ran);
        assert_true(j[i].done_on_main);
        assert_int_equal(j[i].done_seq, i);
    }
    ev_run(loop, 0); /* the pool left nothing behind on the loop */
    ev_loop_destroy(loop);
}

/* Jobs whose work finished but whose done the loop has not delivered yet get
 * done(arg, false) from free. */
static void test_free_delivers_finished(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    workpool *p = workpool_new(loop, "finished", 2, 10);
    assert_non_null(p);
    job j[3];
    memset(j, 0, sizeof j);
    for (int i = 0; i < 3; i++) {
        j[i].n = 100;
        assert_int_equal(workpool_submit(p, work_compute, on_done, &j[i]), CHORUS_OK);
    }
    for (;;) {
        pthread_mutex_lock(&gate.mu);
        int ran = gate.ran;
        pthread_mutex_unlock(&gate.mu);
        if (ran == 3)
            break;
        usleep(1000);
    }
    workpool_free(p);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(j[i].done_calls, 1);
        assert_false(j[i].cancelled);
        assert_true(j[i].result == sum_squares(100));
    }
    ev_loop_destroy(loop);
}

static workpool *self_freeing_pool;
static int chain_left;

/* Frees the pool from inside its own done; the pool must outlive this call. */
static void on_done_free(void *arg, bool cancelled)
{
    on_done(arg, cancelled);
    workpool_free(self_freeing_pool);
    workpool_free(self_freeing_pool); /* a second call is a no-op */
    job extra = {0};
    assert_int_equal(workpool_submit(self_freeing_pool, work_compute, on_done, &extra),
                     CHORUS_ERR);
}

/* free from inside a done: every other job still gets exactly one done, cancelled
 * exactly when its work did not run, and the loop is left clean. */
static void test_free_from_done(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    self_freeing_pool = workpool_new(loop, "selffree", 1, 10);
    assert_non_null(self_freeing_pool);
    job j[4];
    memset(j, 0, sizeof j);
    assert_int_equal(workpool_submit(self_freeing_pool, work_compute, on_done_free, &j[0]),
                     CHORUS_OK);
    for (int i = 1; i < 4; i++)
        assert_int_equal(workpool_submit(self_freeing_pool, work_compute, on_done, &j[i]),
                         CHORUS_OK);
    ev_run(loop, 0);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(j[i].done_calls, 1);
        assert_true(j[i].cancelled == !j[i].ran);
        assert_true(j[i].done_on_main);
    }
    ev_run(loop, 0);
    ev_loop_destroy(loop);
}

/* A done that submits the next job: ev_run keeps going until the chain ends. */
static void on_done_chain(void *arg, bool cancelled)
{
    on_done(arg, cancelled);
    if (--chain_left > 0)
        assert_int_equal(
            workpool_submit(self_freeing_pool, work_compute, on_done_chain, arg), CHORUS_OK);
}

static void test_submit_from_done(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    self_freeing_pool = workpool_new(loop, "chain", 2, 1);
    job j = {.n = 50};
    chain_left = 10;
    assert_int_equal(workpool_submit(self_freeing_pool, work_compute, on_done_chain, &j),
                     CHORUS_OK);
    ev_run(loop, 0);
    assert_int_equal(j.done_calls, 10);
    assert_int_equal(chain_left, 0);
    workpool_free(self_freeing_pool);
    ev_loop_destroy(loop);
}

/* Bad arguments are refused without side effects. */
static void test_bad_args(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    assert_null(workpool_new(NULL, "x", 1, 1));
    assert_null(workpool_new(loop, NULL, 1, 1));
    assert_null(workpool_new(loop, "x", 0, 1));
    assert_null(workpool_new(loop, "x", 257, 1));
    assert_null(workpool_new(loop, "x", 1, 0));
    workpool *p = workpool_new(loop, "args", 1, 1);
    job j = {0};
    assert_int_equal(workpool_submit(p, NULL, on_done, &j), CHORUS_ERR);
    assert_int_equal(workpool_submit(p, work_compute, NULL, &j), CHORUS_ERR);
    assert_int_equal(workpool_submit(NULL, work_compute, on_done, &j), CHORUS_ERR);
    workpool_free(p);
    workpool_free(NULL);
    ev_run(loop, 0);
    ev_loop_destroy(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hundred_jobs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_pool_lets_loop_exit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_cancels_waiting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_delivers_finished, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_from_done, setup, teardown),
        cmocka_unit_test_setup_teardown(test_submit_from_done, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_args, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
