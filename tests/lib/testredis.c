/* testredis.c - a private redis-server for one test (testredis.h). */
#include "testredis.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static bool pings(const test_redis *r)
{
    redisContext *c = redisConnect("127.0.0.1", r->port);
    bool ok = false;
    if (c && !c->err) {
        redisReply *rep = redisCommand(c, "PING");
        ok = rep && rep->type == REDIS_REPLY_STATUS;
        freeReplyObject(rep);
    }
    redisFree(c);
    return ok;
}

void test_redis_init(test_redis *r, bool appendonly)
{
    r->port = test_free_port();
    r->appendonly = appendonly;
    snprintf(r->dir, sizeof r->dir, "/tmp/chorus-test-redis-%d", (int)getpid());
    mkdir(r->dir, 0700);
    test_redis_start(r);
}

void test_redis_start(test_redis *r)
{
    char port[16];
    snprintf(port, sizeof port, "%d", r->port);
    const char *args[] = {"--port", port, "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", r->appendonly ? "yes" : "no",
                          "--appendfsync", "always", "--dir", r->dir, NULL};
    assert_int_equal(test_exec_start(&r->proc, "redis-server", args, NULL), 0);
    for (int64_t end = test_now_ms() + 10000; test_now_ms() < end; usleep(20000))
        if (pings(r))
            return;
    test_proc_dump_log(&r->proc);
    fail_msg("redis-server did not answer PING within 10 s");
}

void test_redis_stop(test_redis *r)
{
    /* SIGTERM: Redis syncs the append-only file and exits 0. */
    assert_int_equal(test_proc_stop(&r->proc, SIGTERM, 10000), 0);
}

int test_redis_destroy(test_redis *r)
{
    test_proc_stop(&r->proc, SIGTERM, 10000);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf -- '%s'", r->dir);
    return system(cmd) == 0 ? 0 : -1;
}

redisContext *test_redis_connect(const test_redis *r)
{
    redisContext *c = redisConnect("127.0.0.1", r->port);
    if (!c || c->err)
        fail_msg("cannot connect to the test redis on port %d", r->port);
    return c;
}

void test_redis_url(const test_redis *r, char *out, size_t outlen)
{
    snprintf(out, outlen, "redis://127.0.0.1:%d/0", r->port);
}
