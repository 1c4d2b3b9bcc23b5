/* testloop.h - spinning a libev loop in a blocking test until something has happened. */
#ifndef CHORUS_TESTLOOP_H
#define CHORUS_TESTLOOP_H

#include <stdbool.h>

#include <ev.h>

typedef bool (*test_cond_fn)(void *arg);

/* Runs the loop until cond(arg) holds (checked every 2 ms) or timeout_ms passes.
 * cond NULL: just runs the loop for timeout_ms. Returns whether cond held. */
bool test_run_until(struct ev_loop *loop, test_cond_fn cond, void *arg, int timeout_ms);

#endif
