/* workpool.c - threads for CPU-heavy jobs, results handed back to the loop by ev_async.
 *
 * Two lists cross threads, both under one mutex: "waiting" (loop thread to pool threads,
 * with a condition variable) and "finished" (pool threads to loop thread, with the
 * ev_async as the doorbell). Everything else is owned by one side: the loop thread owns
 * the counters, the metrics and the loop's reference count; a pool thread owns the job
 * it has popped until it pushes it onto "finished". One mutex is enough: it is held for
 * a few list operations, never while work or done runs.
 */
#include "chorus/workpool.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "chorus/metrics.h"
#include "chorus/status.h"

#define WORKPOOL_MAX_THREADS 256

typedef struct wp_job {
    struct wp_job *next;
    workpool_work_fn work;
    workpool_done_fn done;
    void *arg;
} wp_job;

typedef struct wp_list {
    wp_job *head, *tail;
} wp_list;

struct workpool {
    struct ev_loop *loop;
    ev_async wake;
    char *name;
    int queue_max;
    int nthreads;
    pthread_t *threads;

    /* Shared with the pool threads: read and written only under mu. */
    pthread_mutex_t mu;
    pthread_cond_t cond; /* a job was queued, or stopping was set */
    wp_list waiting;
    int nwaiting;
    wp_list finished;
    bool stopping;

    /* Loop thread only. */
    int pending;         /* accepted jobs whose done has not run yet */
    bool in_done;        /* a done of this pool is running */
    bool closing;        /* workpool_free was called: submits fail */
    bool free_deferred;  /* ...from inside a done: finish it when that batch ends */
    metrics_series *m_queue, *m_jobs, *m_rejected;
};

/* ---- lists (callers hold mu, or are the only thread left) ---- */

static void list_push(wp_list *l, wp_job *j)
{
    j->next = NULL;
    if (l->tail)
        l->tail->next = j;
    else
        l->head = j;
    l->tail = j;
}

static wp_job *list_pop(wp_list *l)
{
    wp_job *j = l->head;
    l->head = j->next;
    if (!l->head)
        l->tail = NULL;
    return j;
}

/* Empties l and returns its jobs as a chain. */
static wp_job *list_take(wp_list *l)
{
    wp_job *j = l->head;
    l->head = l->tail = NULL;
    return j;
}

/* ---- pool threads ---- */

static void *worker_main(void *arg)
{
    workpool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stopping && !p->waiting.head)
            pthread_cond_wait(&p->cond, &p->mu);
        if (p->stopping)
            break;
        wp_job *j = list_pop(&p->waiting);
        p->nwaiting--;
        pthread_mutex_unlock(&p->mu);
        j->work(j->arg);
        pthread_mutex_lock(&p->mu);
        list_push(&p->finished, j);
        /* Thread-safe by libev's contract; several sends before the loop wakes up
         * coalesce into one callback, which takes the whole list. */
        ev_async_send(p->loop, &p->wake);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Tells the threads to exit once their current job is done, and waits for them. */
static void threads_stop(workpool *p, int n)
{
    pthread_mutex_lock(&p->mu);
    p->stopping = true;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < n; i++)
        pthread_join(p->threads[i], NULL);
}

/* Starts the threads with every signal blocked: the loop thread handles signals
 * (ev_signal), and a signal landing on a pool thread could be lost or, with a default
 * action, end the process. Returns how many started. */
static int threads_start(workpool *p)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int n = 0;
    while (n < p->nthreads && pthread_create(&p->threads[n], NULL, worker_main, p) == 0)
        n++;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return n;
}

/* ---- loop thread ---- */

static void gauge_refresh(workpool *p, int nwaiting)
{
    if (p->m_queue)
        metrics_set(p->m_queue, nwaiting);
}

/* The ev_async is unreferenced while no job is pending, so an idle pool never keeps
 * ev_run from returning; a pending job holds one reference until its done has run. */
static void pending_add(workpool *p)
{
    if (p->pending++ == 0)
        ev_ref(p->loop);
}

static void pending_sub(workpool *p)
{
    if (--p->pending == 0)
        ev_unref(p->loop);
}

/* Calls done for a chain of jobs and frees them. */
static void deliver(workpool *p, wp_job *j, bool cancelled)
{
    bool outer = p->in_done;
    p->in_done = true;
    while (j) {
        wp_job *next = j->next;
        j->done(j->arg, cancelled);
        free(j);
        pending_sub(p);
        j = next;
    }
    p->in_done = outer;
}

static void pool_destroy(workpool *p)
{
    p->closing = true;
    threads_stop(p, p->nthreads);
    /* The threads are gone: the lists are ours now, no lock needed. */
    deliver(p, list_take(&p->finished), false);
    deliver(p, list_take(&p->waiting), true);
    p->nwaiting = 0;
    gauge_refresh(p, 0);
    ev_ref(p->loop); /* balances the ev_unref after start (pending is 0 here) */
    ev_async_stop(p->loop, &p->wake);
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p->name);
    free(p);
}

static void on_wake(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop;
    (void)revents;
    workpool *p = w->data;
    pthread_mutex_lock(&p->mu);
    wp_job *done = list_take(&p->finished);
    int nwaiting = p->nwaiting;
    pthread_mutex_unlock(&p->mu);
    gauge_refresh(p, nwaiting);
    deliver(p, done, false);
    if (p->free_deferred)
        pool_destroy(p);
}

static metrics_series *series(metrics_type type, const char *name, const char *help,
                              const char *pool)
{
    metrics_family *f = metrics_family_new(type, name, help, "pool", NULL, 0);
    return f ? metrics_with1(f, pool) : NULL;
}

static void metrics_setup(workpool *p)
{
    p->m_queue = series(METRICS_GAUGE, "chorus_workpool_queue_length",
                        "Jobs waiting for a worker thread", p->name);
    p->m_jobs = series(METRICS_COUNTER, "chorus_workpool_jobs_total",
                       "Jobs accepted by the worker pool", p->name);
    p->m_rejected = series(METRICS_COUNTER, "chorus_workpool_rejected_total",
                           "Jobs refused because the worker pool queue was full", p->name);
    gauge_refresh(p, 0);
}

workpool *workpool_new(struct ev_loop *loop, const char *name, int threads, int queue_max)
{
    if (!loop || !name || threads < 1 || threads > WORKPOOL_MAX_THREADS || queue_max < 1)
        return NULL;
    workpool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->name = strdup(name);
    p->threads = calloc((size_t)threads, sizeof *p->threads);
    if (!p->name || !p->threads) {
        free(p->name);
        free(p->threads);
        free(p);
        return NULL;
    }
    p->loop = loop;
    p->nthreads = threads;
    p->queue_max = queue_max;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cond, NULL);
    ev_async_init(&p->wake, on_wake);
    p->wake.data = p;
    /* Started before the threads, which may send to it as soon as they run. */
    ev_async_start(loop, &p->wake);
    ev_unref(loop);
    int started = threads_start(p);
    if (started < threads) {
        threads_stop(p, started);
        p->nthreads = 0;
        pool_destroy(p);
        return NULL;
    }
    metrics_setup(p);
    return p;
}

int workpool_submit(workpool *p, workpool_work_fn work, workpool_done_fn done, void *arg)
{
    if (!p || !work || !done || p->closing)
        return CHORUS_ERR;
    wp_job *j = malloc(sizeof *j);
    if (!j)
        return CHORUS_ERR;
    j->work = work;
    j->done = done;
    j->arg = arg;
    pthread_mutex_lock(&p->mu);
    bool full = p->nwaiting >= p->queue_max;
    if (!full) {
        list_push(&p->waiting, j);
        p->nwaiting++;
        pthread_cond_signal(&p->cond);
    }
    int nwaiting = p->nwaiting;
    pthread_mutex_unlock(&p->mu);
    if (full) {
        free(j);
        if (p->m_rejected)
            metrics_inc(p->m_rejected);
        return CHORUS_AGAIN;
    }
    pending_add(p);
    gauge_refresh(p, nwaiting);
    if (p->m_jobs)
        metrics_inc(p->m_jobs);
    return CHORUS_OK;
}

void workpool_free(workpool *p)
{
    if (!p || p->closing)
        return;
    if (p->in_done) {
        /* We are inside one of our own done calls, with on_wake or pool_destroy still
         * walking a chain of jobs: finish once that chain is done. */
        p->closing = true;
        p->free_deferred = true;
        return;
    }
    pool_destroy(p);
}
