/* load_post.c - a publisher of the harness: posts messages through the REST API at its
 * share of the rate, into random channels, each by a member of the channel, on one
 * keep-alive connection. The text starts with the send time in microseconds, so every
 * receiver measures the delivery latency from the start of the POST. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "load.h"

static int dial(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    if (fd >= 0)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* One POST on fd; the HTTP status, or -1 when the connection failed. */
static int post_one(int fd, const char *path, const char *token, const char *body)
{
    char req[4096 + 2048];
    int n = snprintf(req, sizeof req,
                     "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     path, token, strlen(body), body);
    if (n >= (int)sizeof req || write(fd, req, (size_t)n) != n)
        return -1;
    char in[16384];
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, in + len, sizeof in - 1 - len);
        if (r <= 0)
            return -1;
        len += (size_t)r;
        in[len] = '\0';
        char *end = strstr(in, "\r\n\r\n"), *cl = strcasestr(in, "content-length: ");
        if (end && cl && (size_t)(end + 4 - in) + (size_t)atol(cl + 15) <= len)
            return atoi(in + 9);
        if (len == sizeof in - 1)
            return -1;
    }
}

static void sleep_until(double t)
{
    double now = (double)now_us() / 1e6;
    if (t > now) {
        struct timespec ts = {(time_t)(t - now), (long)((t - now - (double)(time_t)(t - now)) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

int publisher_run(const scenario *sc, const population *p, int index, int fd)
{
    stats st = {.worker = -1 - index};
    double rate = sc->rate / sc->publishers, t0 = (double)now_us() / 1e6;
    double start = t0 + sc->connections / sc->ramp + 2, stop = start + sc->duration;
    char *pad = malloc((size_t)sc->payload + 1);
    memset(pad, 'x', (size_t)sc->payload);
    pad[sc->payload] = '\0';
    srand((unsigned)(getpid() * 7919));
    int conn = -1;
    double next = start, last_report = t0;
    sleep_until(start);
    while ((double)now_us() / 1e6 < stop && (double)now_us() / 1e6 - t0 < sc->deadline) {
        sleep_until(next);
        next += 1.0 / rate;
        const pop_channel *ch = &p->channels[rand() % p->nchannels];
        const pop_user *poster = &p->users[ch->first];
        char path[160], body[4200];
        snprintf(path, sizeof path, "/api/v1/workspaces/%lld/channels/%lld/messages",
                 ch->workspace ? ch->workspace : p->workspace, ch->id);
        snprintf(body, sizeof body, "{\"text\":\"%llu|%s\"}", (unsigned long long)now_us(), pad);
        if (conn < 0)
            conn = dial(sc->gateway_port);
        int status = conn >= 0 ? post_one(conn, path, poster->token, body) : -1;
        if (status < 0 && conn >= 0) {
            close(conn);
            conn = -1;
        }
        if (status == 201)
            st.posted++;
        else if (st.post_errors++ == 0)
            fprintf(stderr, "chorus-load: a post answered %d (more are counted, not shown)\n",
                    status);
        if ((double)now_us() / 1e6 - last_report >= 1) {
            last_report = (double)now_us() / 1e6;
            if (write(fd, &st, sizeof st) != (ssize_t)sizeof st)
                break;
        }
    }
    if (write(fd, &st, sizeof st) != (ssize_t)sizeof st)
        perror("publisher report");
    if (conn >= 0)
        close(conn);
    free(pad);
    return 0;
}
