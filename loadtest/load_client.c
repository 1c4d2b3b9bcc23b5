/* load_client.c - a connection worker of the harness: many WebSocket sessions on one
 * libev loop, each through POST /realtime/connect (as a real client), then the node's
 * upgrade, then reading frames. Its own minimal client: libwebsockets' client would
 * cost more memory per session than the server side it measures.
 *
 * Per session it checks the seqs of its channel (lost, duplicate, out of order) and the
 * latency of each message (the publisher puts its send time at the head of the text).
 * A session the node closes reconnects through the gateway and resumes from its last
 * seq, as a client must. With --resume-share, that share of the sessions also disconnects
 * on purpose once, at a random moment while messages are posted, stays away a moment
 * and comes back the same way: what it missed must then arrive exactly once, in order.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ev.h>
#include <jansson.h>

#include "load.h"

/* A worker reads every socket into one buffer of IN_MAX and takes the whole frames from
 * there; a session keeps only the tail of a frame not yet whole, in a buffer of its own
 * sized to it. Each session used to have an IN_MAX buffer of its own: a mapping each
 * (mmap, page faults, a tenth of the harness's CPU in a ramp), every read landing in
 * memory no cache had seen for a second. */
#define IN_MAX (1 << 20)
/* The largest request a session writes (the upgrade, with its token). */
#define OUT_MAX 2048
/* A session pings every heartbeat_ms its node's hello gave, as API.md asks of clients;
 * this until a hello says. */
#define PING_S 20.0
/* Pings go out from a check every 100 ms, not every second: each session's ping falls
 * due a heartbeat after its last, but a 1 s tick sent a worker's due pings (about 700 in
 * the 100k run) in one burst, which the nodes then answered all at once. */
#define PING_TICK_S 0.1
#define PING_SLICES 10
/* A connect (gateway answer, then the node's upgrade) that has not finished by then
 * failed: it is counted with its step and retried, instead of waiting for ever on a
 * server that never answers. */
#define CONNECT_TIMEOUT_S 15.0
#define REPORT_S 0.25

enum { C_IDLE, C_GATEWAY, C_UPGRADE, C_OPEN };

/* Why the session sends a resume when it opens. */
enum { R_NONE, R_LATE, R_CLOSED, R_DROPPED };

typedef struct conn {
    struct worker *w;
    int user;
    int state;
    ev_io io;
    char *in;                /* the bytes not yet taken (a frame's start), or NULL */
    size_t in_len, in_cap;
    char *out;               /* the bytes not yet written, or NULL */
    size_t out_len, out_off;
    uint64_t started;        /* us, when this (re)connect began */
    long long channel;       /* the channel whose seqs it checks */
    long long next_seq;      /* the seq of its channel it must get next */
    int resume;              /* R_*: send a resume after the upgrade, and why */
    bool replaying;          /* a resume was sent and "resumed" has not come yet */
    double drop_at;          /* when to disconnect on purpose (ev_now), 0: never */
    double back_at;          /* do not reconnect before (after a deliberate drop) */
    double opened_at;        /* s after the worker's start, when the session last opened */
    int opens;               /* how many times it opened */
    int opened_as;           /* its R_* when it last opened */
    double last_ping;
    bool waiting;            /* in the worker's line of sessions to reopen */
} conn;

typedef struct worker {
    const scenario *sc;
    const population *p;
    struct ev_loop *loop;
    int index, fd;
    conn *conns;
    int nconns, opened;
    int *waiting;            /* sessions to reopen, a ring of nconns (each at most once) */
    int wait_head, wait_n;
    double credit, credit_at; /* reopens due at the ramp's pace, and since when */
    double t0;
    ev_timer ramp, report, ping, drop;
    unsigned rand_state;
    int lost_told;
    double ping_s;           /* the heartbeat of the last hello, or PING_S */
    unsigned ping_ticks;
    char *rbuf;              /* IN_MAX + 1: every read lands here */
    stats st;
} worker;

static void conn_io(struct ev_loop *loop, ev_io *io, int revents);

/* ---- sockets ------------------------------------------------------------------------ */

static int dial(worker *w, int user, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* The port is picked at connect(), unique per 4-tuple, not at bind(): a bind(0)
     * searches the address's whole port range for one no socket holds, and with tens of
     * thousands held that search put the workers 85 % in the kernel and stalled the
     * 100k run at 24,000 sessions (docs/LOADTEST.md). */
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    struct sockaddr_in src = {.sin_family = AF_INET};
    src.sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(user % w->sc->sources));
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&src, sizeof src) != 0 ||
        (connect(fd, (struct sockaddr *)&dst, sizeof dst) != 0 && errno != EINPROGRESS)) {
        close(fd);
        return -1;
    }
    return fd;
}

static void conn_watch(conn *c, int fd, int events)
{
    ev_io_stop(c->w->loop, &c->io);
    ev_io_init(&c->io, conn_io, fd, events);
    c->io.data = c;
    ev_io_start(c->w->loop, &c->io);
}

/* Puts an idle session in the line to reopen (the ramp timer takes it from there). */
static void wait_push(conn *c)
{
    worker *w = c->w;
    if (c->waiting || w->wait_n == w->nconns)
        return;
    w->waiting[(w->wait_head + w->wait_n++) % w->nconns] = (int)(c - w->conns);
    c->waiting = true;
}

static conn *wait_pop(worker *w)
{
    conn *c = &w->conns[w->waiting[w->wait_head]];
    w->wait_head = (w->wait_head + 1) % w->nconns;
    w->wait_n--;
    c->waiting = false;
    return c;
}

/* Every session that closes goes in the line to reopen: one on its way from the gateway
 * to its node is taken out of it again when its turn comes. */
static void conn_close(conn *c)
{
    if (c->io.fd > 0) {
        ev_io_stop(c->w->loop, &c->io);
        close(c->io.fd);
    }
    c->io.fd = -1;
    free(c->in);
    free(c->out);
    c->in = c->out = NULL;
    c->in_len = c->in_cap = c->out_len = c->out_off = 0;
    c->state = C_IDLE;
    c->replaying = false;
    wait_push(c);
}

/* An open session writes at once (pings, pongs, ops): a wait for writability was two
 * epoll_ctl and a pass of the loop per write. A connecting socket, or a write the socket
 * did not take whole, waits for EV_WRITE with the rest. One write pending at a time. */
static bool conn_send(conn *c, const char *data, size_t len)
{
    if (len > OUT_MAX || c->out_off < c->out_len)
        return false;
    size_t sent = 0;
    if (c->state == C_OPEN) {
        ssize_t n = write(c->io.fd, data, len);
        sent = n > 0 ? (size_t)n : 0; /* an error shows on the read side */
        if (sent == len)
            return true;
    }
    char *out = malloc(len - sent);
    if (!out)
        return false;
    memcpy(out, data + sent, len - sent);
    free(c->out);
    c->out = out;
    c->out_len = len - sent;
    c->out_off = 0;
    conn_watch(c, c->io.fd, EV_READ | EV_WRITE);
    return true;
}

/* ---- the steps ---------------------------------------------------------------------- */

static void conn_start(conn *c)
{
    worker *w = c->w;
    c->started = now_us();
    int fd = dial(w, c->user, w->sc->gateway_port);
    if (fd < 0) {
        w->st.failed_connect++;
        w->st.fail_no_answer++;
        wait_push(c);
        return;
    }
    c->io.fd = fd;
    c->state = C_GATEWAY;
    w->st.connecting++;
    char req[1200];
    int n = snprintf(req, sizeof req,
                     "POST /api/v1/realtime/connect HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Authorization: Bearer %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                     w->p->users[c->user].token);
    conn_send(c, req, (size_t)n);
}

static void note_port(worker *w, int port)
{
    for (int i = 0; i < w->st.nnode_ports; i++)
        if (w->st.node_ports[i] == port)
            return;
    if (w->st.nnode_ports < 16)
        w->st.node_ports[w->st.nnode_ports++] = port;
}

/* The gateway's answer: the node's port and a token, then the node's upgrade. */
static void on_assigned(conn *c, const char *in)
{
    worker *w = c->w;
    const char *body = strstr(in, "\r\n\r\n");
    bool ok = strncmp(in, "HTTP/1.1 200", 12) == 0;
    bool no_room = strncmp(in, "HTTP/1.1 503", 12) == 0;
    json_t *j = body && ok ? json_loads(body + 4, 0, NULL) : NULL;
    const char *url = json_string_value(json_object_get(j, "url"));
    const char *token = json_string_value(json_object_get(j, "token"));
    int port = 0;
    conn_close(c);
    if (!url || !token || sscanf(url, "ws://%*[^:]:%d/", &port) != 1 ||
        (c->io.fd = dial(w, c->user, port)) < 0) {
        w->st.failed_connect++;
        w->st.fail_503 += no_room;
        w->st.fail_status += !ok && !no_room;
        w->st.fail_node += ok;
        w->st.connecting--;
        json_decref(j);
        return; /* retried by the ramp timer: the gateway had no room, say */
    }
    note_port(w, port);
    c->state = C_UPGRADE;
    /* A first connect close to the posts resumes from seq 0 like a late one: on a loaded
     * server the upgrade, then the node's channel subscription, can finish after the
     * first posts of its channel (both within the connect timeout). */
    if (c->resume == R_NONE &&
        ev_now(w->loop) - w->t0 > scenario_posting_start(w->sc) - CONNECT_TIMEOUT_S)
        c->resume = R_LATE;
    char req[1400];
    /* resume=1: the node holds live events until the resume comes, however late (a
     * starved client or node must not turn into a gap; docs/WSS.md "Resume"). */
    int n = snprintf(req, sizeof req,
                     "GET /ws?token=%s%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: Y2hvcnVzLWxvYWQtdGVzdA==\r\n"
                     "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: %s\r\n\r\n",
                     token, c->resume != R_NONE ? "&resume=1" : "", port,
                     w->sc->msgpack ? "chorus.msgpack" : "chorus.json");
    json_decref(j);
    conn_send(c, req, (size_t)n);
}

/* A masked client frame (mask 0: the payload goes as it is) in the session's protocol:
 * a text frame, or a binary one for msgpack. The op was written at f + 6. */
static bool send_op(conn *c, char *f, size_t n)
{
    if (n == 0 || n > 125 || c->out_off < c->out_len)
        return false; /* small ops only, and never over a pending write */
    f[0] = (char)(c->w->sc->msgpack ? 0x82 : 0x81);
    f[1] = (char)(0x80 | n);
    memset(f + 2, 0, 4);
    return conn_send(c, f, n + 6);
}

static void send_resume(conn *c)
{
    char f[6 + 125];
    c->replaying =
        send_op(c, f, frame_resume(c->w->sc->msgpack, c->channel, c->next_seq - 1, f + 6, 125));
}

static void send_ping(conn *c)
{
    char f[6 + 125];
    send_op(c, f, frame_ping(c->w->sc->msgpack, f + 6, 125));
}

static void on_open(conn *c)
{
    worker *w = c->w;
    w->st.connecting--;
    w->st.connected++;
    hist_add(&w->st.connect_ms, now_us() - c->started);
    c->state = C_OPEN;
    c->last_ping = ev_now(w->loop);
    c->opened_at = ev_now(w->loop) - w->t0;
    c->opens++;
    c->opened_as = c->resume;
    /* a reconnect, or a first connect after the posts began: the missed ones first */
    if (c->resume == R_NONE && ev_now(w->loop) - w->t0 > scenario_posting_start(w->sc) - 0.5)
        c->resume = R_LATE;
    if (c->resume != R_NONE)
        send_resume(c);
}

/* ---- frames ------------------------------------------------------------------------- */

/* A number after a header's name, which may come in any case. */
static long long num_after_ci(const char *s, const char *key)
{
    const char *p = strcasestr(s, key);
    return p ? atoll(p + strlen(key)) : -1;
}

/* The end of a resume: counted by why the session had to resume. */
static void on_resumed(conn *c)
{
    if (!c->replaying)
        return;
    c->replaying = false;
    c->w->st.resumed_drops += c->resume == R_DROPPED;
    c->w->st.resumed_closes += c->resume == R_CLOSED;
    c->resume = R_NONE;
}

/* An order finding, with what the session went through: where to look. The first few
 * of a worker only. */
static void tell(conn *c, const char *what, long long seq)
{
    worker *w = c->w;
    if (w->lost_told++ >= 5)
        return;
    fprintf(stderr, "chorus-load: worker %d: user %d channel %lld: seq %lld %s where %lld was "
                    "due (opened %d times, last at %.1f s as %s%s; now %.1f s)\n",
            w->index, c->user, c->channel, seq, what, c->next_seq, c->opens, c->opened_at,
            (const char *[]){"fresh", "late", "closed", "dropped"}[c->opened_as],
            c->replaying ? ", resuming" : "", ev_now(w->loop) - w->t0);
}

static void on_message(conn *c, const char *p, size_t n)
{
    worker *w = c->w;
    frame_event ev = frame_read(w->sc->msgpack, p, n);
    if (ev.kind == FRAME_RESUMED)
        return on_resumed(c);
    if (ev.kind == FRAME_HELLO && ev.seq >= 1000) {
        w->ping_s = (double)ev.seq / 1000.0;
        return;
    }
    if (ev.kind != FRAME_MESSAGE || ev.ch != c->channel || ev.seq <= 0)
        return;
    long long seq = ev.seq;
    w->st.deliveries++;
    uint64_t now = now_us();
    /* a replayed event's age is the time the session was away, not delivery latency */
    if (c->replaying)
        w->st.replayed++;
    else if (ev.sent_us > 0 && ev.sent_us <= now)
        hist_add(&w->st.latency, now - ev.sent_us);
    if (seq == c->next_seq) {
    } else if (seq == c->next_seq - 1) {
        w->st.duplicate++;
        tell(c, "came again", seq);
    } else if (seq < c->next_seq) {
        w->st.out_of_order++;
        tell(c, "came late", seq);
    } else {
        w->st.lost += (uint64_t)(seq - c->next_seq);
        tell(c, "skipped some", seq);
    }
    if (seq >= c->next_seq)
        c->next_seq = seq + 1;
}

/* The whole frames at the front of b (len bytes, with a spare byte after them): how many
 * bytes they took, or -1 when the node closed the session. */
static long read_frames(conn *c, unsigned char *b, size_t len)
{
    size_t off = 0;
    while (len - off >= 2) {
        unsigned char *f = b + off;
        uint64_t n = f[1] & 0x7f;
        size_t h = 2;
        if (n == 126) {
            if (len - off < 4)
                break;
            n = (uint64_t)f[2] << 8 | f[3];
            h = 4;
        } else if (n == 127) {
            if (len - off < 10)
                break;
            n = 0;
            for (int i = 0; i < 8; i++)
                n = n << 8 | f[2 + i];
            h = 10;
        }
        if (len - off < h + n)
            break;
        int op = f[0] & 0x0f;
        if (op == 8)
            return -1;
        if (op == 9 && c->out_off == c->out_len) { /* a ping: pong, empty */
            static const char pong[] = {(char)0x8a, (char)0x80, 0, 0, 0, 0};
            conn_send(c, pong, sizeof pong);
        }
        if (op == 1 || op == 2) { /* text (JSON) or binary (msgpack) */
            unsigned char save = f[h + n];
            f[h + n] = '\0'; /* the buffer has a spare byte past len */
            on_message(c, (char *)f + h, (size_t)n);
            f[h + n] = save;
        }
        off += h + n;
    }
    return (long)off;
}

/* Keeps the n bytes not yet taken until the session's next read. */
static bool keep_rest(conn *c, const char *rest, size_t n)
{
    if (n > c->in_cap) {
        char *in = realloc(c->in, n);
        if (!in)
            return false;
        c->in = in;
        c->in_cap = n;
    }
    if (n)
        memcpy(c->in, rest, n);
    c->in_len = n;
    return true;
}

/* ---- the socket's events ------------------------------------------------------------ */

static void conn_lost(conn *c)
{
    worker *w = c->w;
    if (c->state == C_OPEN) {
        w->st.connected--;
        w->st.closed++;
        if (c->resume != R_DROPPED) /* a resume after a drop stays one until it ends */
            c->resume = R_CLOSED;   /* reconnect through the gateway and resume */
    } else {
        w->st.connecting--;
        w->st.failed_upgrade += c->state == C_UPGRADE;
        w->st.failed_connect += c->state == C_GATEWAY;
        w->st.fail_no_answer += c->state == C_GATEWAY;
    }
    conn_close(c);
}

/* The HTTP answer at the front of buf (have bytes): how many bytes it took, 0 while it
 * is not whole, -1 when the session is over or moved on. */
static long read_http(conn *c, char *buf, size_t have)
{
    char *end = strstr(buf, "\r\n\r\n");
    if (c->state == C_GATEWAY) { /* a whole answer ends it even if the socket stays */
        long long clen = num_after_ci(buf, "content-length: ");
        if (end && clen >= 0 && (size_t)(end + 4 - buf) + (size_t)clen <= have) {
            on_assigned(c, buf);
            return -1;
        }
        return 0;
    }
    if (!end)
        return 0;
    if (strncmp(buf, "HTTP/1.1 101", 12) != 0) {
        conn_lost(c);
        return -1;
    }
    on_open(c);
    return end + 4 - buf;
}

/* What the session still held, then what the socket has, into the worker's buffer; the
 * steps take what they can, and the session keeps the rest. */
static void on_readable(conn *c)
{
    char *buf = c->w->rbuf;
    size_t have = c->in_len;
    if (have)
        memcpy(buf, c->in, have);
    ssize_t n = read(c->io.fd, buf + have, IN_MAX - have);
    if (n <= 0) {
        if (n < 0 && errno == EAGAIN)
            return;
        if (c->state == C_GATEWAY && have) {
            buf[have] = '\0';
            return on_assigned(c, buf); /* Connection: close ends the answer */
        }
        return conn_lost(c);
    }
    have += (size_t)n;
    buf[have] = '\0';
    long used = 0;
    if (c->state != C_OPEN && (used = read_http(c, buf, have)) < 0)
        return;
    if (c->state == C_OPEN) {
        long r = read_frames(c, (unsigned char *)buf + used, have - (size_t)used);
        if (r < 0)
            return conn_lost(c);
        used += r;
    }
    if (!keep_rest(c, buf + used, have - (size_t)used))
        conn_lost(c);
}

static void conn_io(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    conn *c = io->data;
    if ((revents & EV_WRITE) && c->out_off < c->out_len) {
        ssize_t n = write(io->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n < 0 && errno != EAGAIN)
            return conn_lost(c);
        c->out_off += n > 0 ? (size_t)n : 0;
        if (c->out_off == c->out_len) {
            free(c->out);
            c->out = NULL;
            c->out_len = c->out_off = 0;
            conn_watch(c, io->fd, EV_READ);
        }
    }
    if (revents & EV_READ)
        on_readable(c);
}

/* ---- timers ------------------------------------------------------------------------- */

/* Reopens lost sessions at the ramp's pace, counted in time and not in ticks: on a
 * loaded machine a worker's loop passes far less often than its 10 ms timer asks, and
 * reopens paced per tick fell behind the drops (the 100k run with a fifth of the
 * sessions dropping held 85,000 at its lowest and got 10,150 of 19,970 back). */
static void reopen(worker *w, double per_s, uint64_t in_flight_max)
{
    double now = ev_now(w->loop);
    w->credit += per_s * (now - w->credit_at);
    w->credit = w->credit > per_s ? per_s : w->credit; /* at most a second's worth at once */
    w->credit_at = now;
    for (int n = w->wait_n; n > 0 && w->credit >= 1 && w->st.connecting < in_flight_max; n--) {
        conn *c = wait_pop(w);
        if (c->state != C_IDLE)
            continue; /* on its way to its node: out of the line */
        if (c->back_at > now) {
            wait_push(c); /* away on purpose a while longer: to the back */
            continue;
        }
        conn_start(c);
        w->credit--;
    }
}

/* Opens this worker's share of the ramp, and reopens sessions that were lost. */
static void on_ramp(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    worker *w = t->data;
    double share = w->sc->ramp / w->sc->workers;
    /* At most two seconds' worth of connects in flight: a server that slows down gets
     * the ramp's pace, not a pile of open sockets (the 100k run exhausted the gateway's
     * 20,000 files when the ramp kept opening while answers took seconds). */
    uint64_t in_flight_max = (uint64_t)(2 * share) + 10;
    int due = (int)((ev_now(loop) - w->t0) * share) + 1;
    for (; w->opened < w->nconns && w->opened < due && w->st.connecting < in_flight_max;
         w->opened++)
        conn_start(&w->conns[w->opened]);
    reopen(w, share, in_flight_max);
}

static void on_ping(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    worker *w = t->data;
    double now = ev_now(loop);
    uint64_t stale = now_us() - (uint64_t)(CONNECT_TIMEOUT_S * 1e6);
    /* A tenth of the sessions a tick: each is looked at once a second, and the due
     * pings still go out spread over the ticks. All of them every tick was 5 % of a
     * worker's CPU at 15,000 sessions. */
    int slice = (int)(w->ping_ticks++ % PING_SLICES);
    for (int i = slice; i < w->opened; i += PING_SLICES) {
        conn *c = &w->conns[i];
        if (c->state == C_OPEN && now - c->last_ping > w->ping_s) {
            c->last_ping = now;
            send_ping(c);
        } else if ((c->state == C_GATEWAY || c->state == C_UPGRADE) && c->started < stale) {
            conn_lost(c);
        }
    }
}

static double rand01(worker *w)
{
    return (double)rand_r(&w->rand_state) / ((double)RAND_MAX + 1);
}

/* A deliberate disconnect, as a phone that loses its network: the socket just closes.
 * The session comes back after a moment, through the gateway, and resumes. */
static void conn_drop(conn *c)
{
    worker *w = c->w;
    w->st.connected--;
    w->st.dropped++;
    c->resume = R_DROPPED;
    c->drop_at = 0;
    c->back_at = ev_now(w->loop) + 0.25 + 0.75 * rand01(w);
    conn_close(c);
}

/* Drops the sessions whose moment came, while messages are still posted (one that is
 * reconnecting or resuming then goes as soon as it is open and done). */
static void on_drop(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    worker *w = t->data;
    double now = ev_now(loop);
    double stop = w->t0 + scenario_posting_start(w->sc) + w->sc->duration;
    for (int i = 0; i < w->opened; i++) {
        conn *c = &w->conns[i];
        if (c->drop_at > 0 && now >= c->drop_at && now < stop && c->state == C_OPEN &&
            !c->replaying)
            conn_drop(c);
    }
}

/* Picks exactly the share of sessions that will drop (every 1/share-th one), each at a
 * random moment between 10 % and 70 % of the posting time: back and resumed well before
 * the posts end. */
static void plan_drops(worker *w)
{
    double share = w->sc->resume_share, from = w->t0 + scenario_posting_start(w->sc);
    for (int k = 0; k < w->nconns; k++)
        if ((long)((k + 1) * share) > (long)(k * share))
            w->conns[k].drop_at = from + w->sc->duration * (0.1 + 0.6 * rand01(w));
}

static void on_report(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    worker *w = t->data;
    if (write(w->fd, &w->st, sizeof w->st) != (ssize_t)sizeof w->st)
        ev_break(loop, EVBREAK_ALL); /* the parent is gone */
    if (ev_now(loop) - w->t0 > w->sc->deadline)
        ev_break(loop, EVBREAK_ALL);
}

/* At the end: the events a session never got after its last one. A gap shows as lost
 * when a later event comes; a session that stops receiving (or never starts) shows only
 * here, against the highest seq its channel reached in this worker's other sessions. */
static void count_missing(worker *w)
{
    long long *top = calloc((size_t)w->p->nchannels, sizeof *top);
    if (!top)
        return;
    for (int k = 0; k < w->nconns; k++) {
        int ci = w->p->users[w->conns[k].user].channel;
        if (ci >= 0 && w->conns[k].next_seq > top[ci])
            top[ci] = w->conns[k].next_seq;
    }
    for (int k = 0; k < w->nconns; k++) {
        int ci = w->p->users[w->conns[k].user].channel;
        if (ci >= 0)
            w->st.missing += (uint64_t)(top[ci] - w->conns[k].next_seq);
    }
    free(top);
}

/* The parent's SIGTERM ends the run: the loop returns and the last figures go out. */
static void on_term(struct ev_loop *loop, ev_signal *sig, int revents)
{
    (void)sig;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

int worker_run(const scenario *sc, const population *p, int index, int fd)
{
    worker w = {.sc = sc, .p = p, .index = index, .fd = fd};
    w.loop = ev_default_loop(EVFLAG_AUTO);
    /* Each poll of the sockets takes what arrived since the last, instead of one wake-up
     * per delivery; a delivery's receipt is timed when it is read, so the wait counts in
     * its latency (docs/LOADTEST.md). */
    ev_set_io_collect_interval(w.loop, sc->read_every_ms / 1000.0);
    w.st.worker = index;
    for (int u = index; u < sc->connections; u += sc->workers)
        w.nconns++;
    w.conns = calloc((size_t)w.nconns, sizeof *w.conns);
    w.waiting = calloc((size_t)w.nconns, sizeof *w.waiting);
    w.rbuf = malloc(IN_MAX + 1);
    if (!w.conns || !w.waiting || !w.rbuf)
        return 1;
    for (int k = 0, u = index; k < w.nconns; k++, u += sc->workers) {
        const pop_user *pu = &p->users[u];
        /* a seed-load channel starts empty: every session must see seq 1 on */
        w.conns[k] = (conn){.w = &w, .user = u, .state = C_IDLE, .next_seq = 1,
                            .channel = pu->channel >= 0 ? p->channels[pu->channel].id : 0};
        w.conns[k].io.fd = -1;
    }
    w.t0 = w.credit_at = ev_now(w.loop);
    w.ping_s = PING_S;
    w.rand_state = (unsigned)index * 2654435761u + 1;
    plan_drops(&w);
    ev_timer_init(&w.ramp, on_ramp, 0, 0.01);
    /* often: the parent's row of each second is then at most REPORT_S old */
    ev_timer_init(&w.report, on_report, 0.1, REPORT_S);
    ev_timer_init(&w.ping, on_ping, PING_TICK_S, PING_TICK_S);
    ev_timer_init(&w.drop, on_drop, 0.05, 0.05);
    ev_signal term;
    ev_signal_init(&term, on_term, SIGTERM);
    ev_signal_start(w.loop, &term);
    w.ramp.data = w.report.data = w.ping.data = w.drop.data = &w;
    ev_timer_start(w.loop, &w.ramp);
    ev_timer_start(w.loop, &w.report);
    ev_timer_start(w.loop, &w.ping);
    if (sc->resume_share > 0)
        ev_timer_start(w.loop, &w.drop);
    ev_run(w.loop, 0);
    count_missing(&w);
    on_report(w.loop, &w.report, 0); /* the last figures */
    for (int k = 0; k < w.nconns; k++)
        conn_close(&w.conns[k]); /* frees its buffers */
    free(w.conns);
    free(w.waiting);
    free(w.rbuf);
    return 0;
}
