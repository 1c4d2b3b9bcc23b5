/* testutil.c - see testutil.h. */
#include "testutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

const char *test_env(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v)
        fail_msg("%s is not set: run the suite with ./tests/run, which starts its own "
                 "servers", name);
    return v;
}

long test_rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb;
}

int64_t test_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int test_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        fail_msg("cannot find a free port: %s", strerror(errno));
    close(fd);
    return ntohs(a.sin_port);
}

int test_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int test_send_all(int fd, const void *data, size_t n)
{
    const char *p = data;
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

char *test_recv_all(int fd, size_t *len)
{
    size_t cap = 65536, n = 0;
    char *b = malloc(cap + 1);
    for (;;) {
        if (n == cap)
            b = realloc(b, (cap *= 2) + 1);
        ssize_t r = recv(fd, b + n, cap - n, 0);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    b[n] = '\0';
    *len = n;
    return b;
}

static int parse_response(char *raw, size_t n, test_http_resp *out)
{
    char *sep = strstr(raw, "\r\n\r\n");
    if (!sep || sscanf(raw, "HTTP/1.%*d %d", &out->status) != 1)
        return -1;
    *sep = '\0';
    out->headers = strdup(raw);
    size_t off = (size_t)(sep + 4 - raw);
    out->body_len = n - off;
    out->body = malloc(out->body_len + 1);
    memcpy(out->body, sep + 4, out->body_len);
    out->body[out->body_len] = '\0';
    return 0;
}

int test_http(int port, const char *method, const char *path, const char *extra_headers,
              const char *body, size_t body_len, test_http_resp *out)
{
    memset(out, 0, sizeof *out);
    int fd = test_connect(port);
    if (fd < 0)
        return -1;
    char head[4096];
    int hn = snprintf(head, sizeof head,
                      "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n"
                      "%s%s",
                      method, path, port, extra_headers ? extra_headers : "",
                      body ? "" : "\r\n");
    if (body) {
        hn += snprintf(head + hn, sizeof head - (size_t)hn,
                       "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                       body_len);
    }
    int rc = test_send_all(fd, head, (size_t)hn);
    if (rc == 0 && body)
        rc = test_send_all(fd, body, body_len);
    size_t n = 0;
    char *raw = rc == 0 ? test_recv_all(fd, &n) : NULL;
    close(fd);
    if (!raw)
        return -1;
    rc = parse_response(raw, n, out);
    free(raw);
    return rc;
}

void test_http_free(test_http_resp *r)
{
    free(r->headers);
    free(r->body);
    memset(r, 0, sizeof *r);
}

int test_http_header(const test_http_resp *r, const char *name, char *out, size_t outlen)
{
    size_t nlen = strlen(name);
    for (const char *line = r->headers; line && *line;) {
        const char *eol = strstr(line, "\r\n");
        size_t len = eol ? (size_t)(eol - line) : strlen(line);
        if (len > nlen && strncasecmp(line, name, nlen) == 0 && line[nlen] == ':') {
            const char *v = line + nlen + 1;
            while (*v == ' ')
                v++;
            snprintf(out, outlen, "%.*s", (int)(len - (size_t)(v - line)), v);
            return 0;
        }
        line = eol ? eol + 2 : NULL;
    }
    return -1;
}

int test_exec_start(test_proc *p, const char *bin, const char *const *args,
                    const char *const *env)
{
    static int started;
    snprintf(p->log_path, sizeof p->log_path, "/tmp/chorus-test-%d-%lld-%d.log", (int)getpid(),
             (long long)test_now_ms(), ++started);
    p->pid = fork();
    if (p->pid < 0)
        return -1;
    if (p->pid == 0) {
        /* Dies with the test: a test that aborts (a sanitizer finding, a crash) must not
         * leave servers running behind it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(p->log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        /* Nothing else of the test's: a WebSocket the test opened and later closes would
         * stay open in a server started meanwhile (a Redis restarted mid-test held a
         * session's socket, so the node never saw the close). */
        close_range(3, ~0U, 0);
        for (int i = 0; env && env[i]; i++) {
            /* TEST_NOFILE=N: the child's open-files limit, soft and hard (a server near
             * its limit, without using up the test's). */
            if (strncmp(env[i], "TEST_NOFILE=", 12) == 0) {
                rlim_t n = (rlim_t)atol(env[i] + 12);
                struct rlimit rl = {n, n};
                setrlimit(RLIMIT_NOFILE, &rl);
                continue;
            }
            putenv((char *)env[i]);
        }
        const char *argv[32] = {bin};
        for (int i = 0; args && args[i] && i < 30; i++)
            argv[i + 1] = args[i];
        execvp(bin, (char *const *)argv);
        _exit(127);
    }
    return 0;
}

int test_proc_start(test_proc *p, const char *const *args, const char *const *env)
{
    return test_exec_start(p, CHORUS_BIN, args, env);
}

int test_wait_http(int port, const char *path, int want_status, int timeout_ms)
{
    int64_t end = test_now_ms() + timeout_ms;
    while (test_now_ms() < end) {
        test_http_resp r;
        if (test_http(port, "GET", path, NULL, NULL, 0, &r) == 0) {
            int st = r.status;
            test_http_free(&r);
            if (st == want_status)
                return 0;
        }
        usleep(50 * 1000);
    }
    return -1;
}

int test_proc_wait(test_proc *p, int timeout_ms)
{
    int64_t end = test_now_ms() + timeout_ms;
    int status = 0;
    do {
        pid_t w = waitpid(p->pid, &status, WNOHANG);
        if (w == p->pid) {
            p->pid = 0;
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        usleep(20 * 1000);
    } while (test_now_ms() < end);
    return -2;
}

int test_proc_stop(test_proc *p, int sig, int timeout_ms)
{
    if (p->pid <= 0)
        return -1;
    kill(p->pid, sig);
    int rc = test_proc_wait(p, timeout_ms);
    if (rc != -2)
        return rc;
    int status = 0;
    kill(p->pid, SIGKILL);
    waitpid(p->pid, &status, 0);
    p->pid = 0;
    return -1;
}

void test_proc_dump_log(const test_proc *p)
{
    FILE *f = fopen(p->log_path, "r");
    if (!f)
        return;
    char line[1024];
    fprintf(stderr, "---- %s ----\n", p->log_path);
    while (fgets(line, sizeof line, f))
        fputs(line, stderr);
    fclose(f);
}

double test_metric(int port, const char *series)
{
    test_http_resp r;
    if (test_http(port, "GET", "/metrics", NULL, NULL, 0, &r) != 0)
        return -1;
    double v = -1;
    size_t n = strlen(series);
    for (const char *l = r.body; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (strncmp(l, series, n) == 0 && l[n] == ' ')
            v = atof(l + n + 1);
    test_http_free(&r);
    return v;
}
