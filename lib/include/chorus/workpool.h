/* workpool.h - a fixed set of threads for CPU-heavy jobs, reporting back to a libev loop.
 *
 * Password hashing (scrypt, ~100 ms) must never run on the loop thread: it would stall
 * every session of the process. A job's work function runs on one of the pool's
 * threads; its done function runs later on the loop thread, like libuv's
 * uv_queue_work. Jobs start in submission order.
 *
 * Threads: every function here is called on the loop thread, and so is every done.
 * work runs on a pool thread: it must not touch the loop, the logger or the metrics
 * (all single-threaded); it hands its result to done through arg.
 *
 * Bound: at most queue_max jobs wait for a thread (jobs already running are not
 * counted); past that workpool_submit returns CHORUS_AGAIN (the caller answers 503).
 *
 * Loop lifetime: while a job is submitted and its done has not run, the pool keeps the
 * loop alive (ev_run does not return without delivering the result, as with libuv).
 * An idle pool does not: a process whose other watchers have stopped leaves ev_run
 * even though its pool still exists.
 *
 * Metrics (label pool=<name>): chorus_workpool_queue_length (gauge: jobs waiting for a
 * thread; refreshed on the loop thread at each submit and each batch of completions, so
 * it may lag by one job), chorus_workpool_jobs_total (counter: jobs accepted),
 * chorus_workpool_rejected_total (counter: submits refused with CHORUS_AGAIN).
 */
#ifndef CHORUS_WORKPOOL_H
#define CHORUS_WORKPOOL_H

#include <stdbool.h>

#include <ev.h>

typedef struct workpool workpool;

/* Runs on a pool thread. */
typedef void (*workpool_work_fn)(void *arg);

/* Runs on the loop thread, exactly once per accepted job. cancelled is false when work
 * ran to its end, true when the pool was freed before work started (work never ran).
 * done may call workpool_submit, and may call workpool_free on this pool (see there). */
typedef void (*workpool_done_fn)(void *arg, bool cancelled);

/* Starts threads (1..256) threads serving loop. name (copied) labels the metrics;
 * queue_max (>= 1) bounds the jobs waiting for a thread. Returns NULL on bad arguments
 * or when memory or a thread cannot be had. Threads start with every signal blocked, so
 * signals keep reaching the loop thread. */
workpool *workpool_new(struct ev_loop *loop, const char *name, int threads, int queue_max);

/* Queues work(arg) and later done(arg, cancelled). Returns CHORUS_OK (done will be
 * called exactly once, never from inside this call), CHORUS_AGAIN when queue_max jobs
 * are already waiting, or CHORUS_ERR when work or done is NULL, out of memory, or the
 * pool is being freed. On anything but CHORUS_OK neither function is ever called and
 * arg still belongs to the caller. */
int workpool_submit(workpool *p, workpool_work_fn work, workpool_done_fn done, void *arg);

/* Stops the pool. Jobs that have not started are not started. Blocks until the jobs
 * already running finish their work (a scrypt hash at most per thread), joins the
 * threads, then, on the calling (loop) thread and before returning: calls
 * done(arg, false) for every job whose work ran and whose done was still pending, in
 * completion order, then done(arg, true) for every job that never started, in
 * submission order. Submits made from those done calls fail with CHORUS_ERR.
 * Called from inside a done of this pool, the same happens just after that done
 * returns (the pool cannot be freed under its own callback); then it has not happened
 * yet when workpool_free returns. NULL is a no-op. */
void workpool_free(workpool *p);

#endif
