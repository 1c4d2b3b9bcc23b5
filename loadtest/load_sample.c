/* load_sample.c - the server side of a run: each WSS node's resident memory and sessions,
 * from its own /metrics (the node's listener serves the admin routes). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "load.h"

static double metric(const char *text, const char *name)
{
    char key[96];
    snprintf(key, sizeof key, "\n%s ", name);
    const char *p = strstr(text, key);
    return p ? atof(p + strlen(key)) : -1;
}

/* GET /metrics on port, whole (Connection: close); NULL when it failed. */
static char *get_metrics(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    static const char req[] = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        write(fd, req, sizeof req - 1) != (ssize_t)(sizeof req - 1)) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    size_t cap = 1 << 20, len = 0;
    char *out = malloc(cap);
    for (ssize_t r; out && len < cap - 1 && (r = read(fd, out + len, cap - 1 - len)) > 0;)
        len += (size_t)r;
    close(fd);
    if (out)
        out[len] = '\0';
    return out;
}

bool sample_node(node_sample *n)
{
    char *text = get_metrics(n->port);
    double rss = text ? metric(text, "process_resident_memory_bytes") : -1;
    double sessions = text ? metric(text, "chorus_wss_connections") : -1;
    free(text);
    if (rss < 0 || sessions < 0)
        return false;
    n->rss_bytes = rss;
    if (n->rss_first == 0) {
        n->rss_first = rss;
        n->sessions_first = sessions;
    }
    n->rss_peak = rss > n->rss_peak ? rss : n->rss_peak;
    n->sessions = sessions;
    n->sessions_peak = sessions > n->sessions_peak ? sessions : n->sessions_peak;
    return true;
}

double node_kib_per_session(const node_sample *n)
{
    double d = n->sessions_peak - n->sessions_first;
    return d > 0 ? (n->rss_peak - n->rss_first) / 1024 / d : 0;
}
