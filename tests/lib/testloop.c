/* testloop.c - see testloop.h. */
#include "testloop.h"

typedef struct waiter {
    test_cond_fn cond;
    void *arg;
    bool met;
} waiter;

static void on_check(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    waiter *wt = w->data;
    if (wt->cond && wt->cond(wt->arg)) {
        wt->met = true;
        ev_break(loop, EVBREAK_ONE);
    }
}

static void on_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    (void)w;
    ev_break(loop, EVBREAK_ONE);
}

bool test_run_until(struct ev_loop *loop, test_cond_fn cond, void *arg, int timeout_ms)
{
    waiter wt = {.cond = cond, .arg = arg};
    ev_timer check, deadline;
    ev_timer_init(&check, on_check, 0.002, 0.002);
    check.data = &wt;
    ev_timer_init(&deadline, on_deadline, timeout_ms / 1000.0, 0.);
    deadline.data = &wt;
    ev_now_update(loop);
    ev_timer_start(loop, &check);
    ev_timer_start(loop, &deadline);
    if (!cond || !cond(arg))
        ev_run(loop, 0);
    else
        wt.met = true;
    ev_timer_stop(loop, &check);
    ev_timer_stop(loop, &deadline);
    return wt.met;
}
