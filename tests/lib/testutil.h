/* testutil.h - helpers shared by the cmocka tests.
 *
 * Tests are plain blocking programs; only the code under test runs on a loop. The
 * helpers here start a chorus process, talk HTTP to it over a raw socket and stop it. */
#ifndef CHORUS_TESTUTIL_H
#define CHORUS_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <cmocka.h>

/* The value of an environment variable the test cannot run without; fails the test
 * (not skips it) when unset: tests/run always provides it. */
const char *test_env(const char *name);

/* A loopback TCP port nobody listens on right now. */
int test_free_port(void);
/* A TCP connection to 127.0.0.1:port with 10 s send and receive timeouts, or -1. */
int test_connect(int port);

typedef struct test_http_resp {
    int status;
    char *headers; /* raw header block, lower-case not guaranteed */
    char *body;
    size_t body_len;
} test_http_resp;

/* One HTTP/1.1 request to 127.0.0.1:port with Connection: close. body may be NULL.
 * extra_headers is "Name: value\r\n..." or NULL. Returns 0, or -1 when the server
 * could not be reached or answered garbage. */
int test_http(int port, const char *method, const char *path, const char *extra_headers,
              const char *body, size_t body_len, test_http_resp *out);
void test_http_free(test_http_resp *r);
/* Writes all n bytes to fd (no SIGPIPE). Returns 0 or -1. */
int test_send_all(int fd, const void *data, size_t n);
/* Everything fd delivers until the peer closes, NUL-terminated (caller frees). */
char *test_recv_all(int fd, size_t *len);
/* The value of a response header (case-insensitive name), copied into out. */
int test_http_header(const test_http_resp *r, const char *name, char *out, size_t outlen);

typedef struct test_proc {
    pid_t pid;
    char log_path[256];
} test_proc;

/* Starts CHORUS_BIN with args (NULL-terminated) and the extra environment entries
 * env ("KEY=value", NULL-terminated); stdout/stderr go to a log file. */
int test_proc_start(test_proc *p, const char *const *args, const char *const *env);
/* The same for any program: bin is a path or a name looked up in PATH. */
int test_exec_start(test_proc *p, const char *bin, const char *const *args,
                    const char *const *env);
/* Polls GET path on port until it answers want_status or timeout_ms passes. */
int test_wait_http(int port, const char *path, int want_status, int timeout_ms);
/* Sends sig and waits up to timeout_ms for the exit; returns the exit status, or -1
 * (then the process was SIGKILLed). */
int test_proc_stop(test_proc *p, int sig, int timeout_ms);
/* Waits up to timeout_ms for the process to exit by itself: its exit status, or -2
 * while it still runs. */
int test_proc_wait(test_proc *p, int timeout_ms);
/* Prints the process log (on failure, to see why). */
void test_proc_dump_log(const test_proc *p);

/* The value of one sample of the /metrics page on port: series is the name with its
 * labels exactly as rendered ("chorus_x_total" or "chorus_y{a=\"b\"}"). -1 when absent
 * or unreachable. */
double test_metric(int port, const char *series);

/* The resident set of a process in KiB (VmRSS), -1 if unreadable. */
long test_rss_kb(pid_t pid);

/* Milliseconds since an arbitrary point (monotonic). */
int64_t test_now_ms(void);

#endif
