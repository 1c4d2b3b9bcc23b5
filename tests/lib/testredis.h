/* testredis.h - a private redis-server for one test: its own port and folder, so that
 * the test can stop and restart it, or rely on nobody else's keys, without touching the
 * shared server of tests/run. Killed with the test (test_exec_start). */
#ifndef CHORUS_TESTREDIS_H
#define CHORUS_TESTREDIS_H

#include <stdbool.h>

#include <hiredis/hiredis.h>

#include "testutil.h"

typedef struct test_redis {
    test_proc proc;
    int port;
    char dir[128];
    bool appendonly; /* keep the data across a restart (fsync always) */
} test_redis;

/* Picks a free port and the folder /tmp/chorus-test-redis-<pid>, then starts it. */
void test_redis_init(test_redis *r, bool appendonly);
/* Starts the server (again, after test_redis_stop) and waits for PING: fails the test
 * (with the log) when it does not answer within 10 s. */
void test_redis_start(test_redis *r);
/* SIGTERM; asserts a clean exit (with the append-only file synced). */
void test_redis_stop(test_redis *r);
/* Stops it if it runs and removes the folder: for teardowns. 0 or -1. */
int test_redis_destroy(test_redis *r);
/* A blocking connection to it; fails the test when it cannot connect. */
redisContext *test_redis_connect(const test_redis *r);
/* "redis://127.0.0.1:<port>/0" into out. */
void test_redis_url(const test_redis *r, char *out, size_t outlen);

#endif
