/* load.h - the load-test harness (docs/LOADTEST.md): what its processes share.
 *
 * The parent reads the population (`chorus seed-load` output), forks connection workers
 * (each under the per-process open-files limit, each on its own loopback source
 * addresses) and publishers, and sums what they report once a second over a pipe.
 */
#ifndef CHORUS_LOAD_H
#define CHORUS_LOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- the latency histogram: log-linear, 1 us to ~137 s, 3 % wide buckets ------------ */
#define HIST_SUB 32                  /* buckets per power of two */
#define HIST_POW 28                  /* powers of two above 1 us */
#define HIST_N (HIST_SUB * HIST_POW)

typedef struct hist {
    uint64_t count[HIST_N];
    uint64_t total;
    uint64_t max_us;
} hist;

void hist_add(hist *h, uint64_t us);
void hist_merge(hist *into, const hist *from);
/* The value at quantile q (0..1) in microseconds (the bucket's upper bound). */
uint64_t hist_quantile(const hist *h, double q);

/* ---- the population ------------------------------------------------------------------ */
typedef struct pop_user {
    long long id;
    char *token;
    int channel;        /* index of the user's first channel (its delivery check) */
} pop_user;

typedef struct pop_channel {
    long long id;
    int first, members; /* member indices first .. first+members-1, round the users */
} pop_channel;

typedef struct population {
    long long workspace;
    pop_user *users;
    int nusers;
    pop_channel *channels;
    int nchannels;
} population;

/* Reads seed-load's output; 0 or -1 (with a message on stderr). */
int pop_read(population *p, const char *path);
void pop_free(population *p);

/* ---- the scenario -------------------------------------------------------------------- */
typedef struct scenario {
    int connections;     /* sessions to hold (<= users) */
    int workers;         /* connection processes */
    int sources;         /* loopback source addresses: 127.0.0.2 .. 127.0.0.(1+sources) */
    double ramp;         /* new connections per second, all workers together */
    double rate;         /* messages per second, all publishers together */
    int publishers;
    int payload;         /* bytes of message text */
    double duration;     /* seconds of steady state after the ramp */
    double deadline;     /* seconds after which everything stops whatever happened */
    int gateway_port;
    bool msgpack;
    const char *report;  /* JSON report path, or NULL */
} scenario;

/* ---- what workers report each second ------------------------------------------------- */
typedef struct stats {
    int worker;
    uint64_t connected, connecting, failed_connect, failed_upgrade, closed, reconnects;
    uint64_t deliveries, lost, duplicate, out_of_order;
    uint64_t posted, post_errors;
    int node_ports[16];  /* the WSS nodes the gateway sent this worker's sessions to */
    int nnode_ports;
    hist connect_ms;     /* connect time (gateway answer to hello), in us */
    hist latency;        /* post start to receipt, in us */
} stats;

/* Runs one connection worker for users index % workers == index; writes stats to fd
 * every second; returns when the run ends. */
int worker_run(const scenario *sc, const population *p, int index, int fd);
/* Runs one publisher: posts at sc->rate / sc->publishers into random channels. */
int publisher_run(const scenario *sc, const population *p, int index, int fd);

/* ---- the server side: each node's /metrics --------------------------------------------- */
typedef struct node_sample {
    int port;
    double rss_bytes, rss_first, rss_peak;
    double sessions, sessions_first, sessions_peak;
} node_sample;

/* Scrapes process_resident_memory_bytes and chorus_wss_connections from port's
 * /metrics into n; false when the node did not answer. */
bool sample_node(node_sample *n);
/* Resident memory per session: growth over sessions added, between the first sample and
 * the peak (KiB); 0 when the node gained none. */
double node_kib_per_session(const node_sample *n);

/* Microseconds of CLOCK_REALTIME (posts carry it; receivers compare). */
uint64_t now_us(void);

#endif
