/* load.h - the load-test harness (docs/LOADTEST.md): what its processes share.
 *
 * The parent reads the population (`chorus seed-load` output), forks connection workers
 * (each under the per-process open-files limit, each on its own loopback source
 * addresses) and publishers, sums what they report over a pipe, samples the servers
 * (load_sample.c, load_store.c) and keeps one row of a time series a second.
 */
#ifndef CHORUS_LOAD_H
#define CHORUS_LOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

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
/* out = now - before, where before is an earlier state of the same histogram: what was
 * added in between (max_us: the top of the highest bucket added to, within now's max). */
void hist_diff(hist *out, const hist *now, const hist *before);
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
    long long workspace; /* its workspace (0: the population's first) */
} pop_channel;

typedef struct population {
    long long workspace;
    pop_user *users;
    int nusers;
    pop_channel *channels;
    int nchannels;
} population;

/* Makes room for one more element in *arr (n used of *cap, doubling); 0, or -1 when
 * out of memory (*arr unchanged). */
int array_grow(void **arr, int n, int *cap, size_t size);
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
    bool msgpack;        /* --protocol msgpack: chorus.msgpack sessions, binary frames */
    double resume_share; /* sessions that disconnect on purpose once and resume (0..1) */
    const char *report;  /* JSON report path, or NULL */
    const char *plots;   /* directory for series.tsv and the PNG plots, or NULL */
    const char *pg_pidfile; /* Postgres' postmaster.pid, or NULL: no Postgres sampling */
    int redis_port;      /* Redis to sample (INFO memory), or 0 */
    double read_every_ms; /* a worker polls its sockets at most this often (0: at once) */
} scenario;

/* When the publishers post: from posting_start to posting_start + duration, in seconds
 * after the start (the ramp, then 2 s for the last sessions to settle). */
double scenario_posting_start(const scenario *sc);

/* ---- what workers report, 4 times a second (publishers: once) ----------------------- */
typedef struct stats {
    int worker;
    uint64_t connected, connecting, failed_connect, failed_upgrade, closed, reconnects;
    /* failed_connect by cause: the gateway answered 503 (no node had room), answered
     * another status, gave no answer (refused, reset, closed), or named a node that could
     * not be dialled */
    uint64_t fail_503, fail_status, fail_no_answer, fail_node;
    uint64_t dropped;         /* deliberate disconnects (--resume-share) */
    uint64_t resumed_drops;   /* resumes completed ("resumed") after a deliberate one */
    uint64_t resumed_closes;  /* ... and after a node closed the session */
    uint64_t deliveries, lost, duplicate, out_of_order;
    uint64_t missing;         /* at the end: events of its channel a session never got */
    uint64_t replayed;        /* deliveries that came in a resume (not in latency) */
    uint64_t posted, post_errors;
    int node_ports[16];  /* the WSS nodes the gateway sent this worker's sessions to */
    int nnode_ports;
    hist connect_ms;     /* connect time (gateway answer to hello), in us */
    hist latency;        /* post start to receipt, in us */
} stats;

/* Runs one connection worker for users index % workers == index; writes stats to fd
 * 4 times a second and once more when the parent's SIGTERM ends the run; returns then. */
int worker_run(const scenario *sc, const population *p, int index, int fd);
/* Runs one publisher: posts at sc->rate / sc->publishers into random channels. */
int publisher_run(const scenario *sc, const population *p, int index, int fd);

/* ---- the server side (load_sample.c, load_store.c) ------------------------------------ */

/* One sampled figure: its first value, its latest and its peak. */
typedef struct gauge {
    double first, now, peak;
    bool seen;
} gauge;

void gauge_set(gauge *g, double v);

typedef struct node_sample {
    int port;
    gauge rss, sessions;
    /* chorus_event_loop_lag_seconds: ticks, their total lag, ticks over 100 ms late */
    gauge lag_ticks, lag_sum, lag_slow;
} node_sample;

/* An HTTP route of the gateway (chorus_http_request*): its counters at the first sample
 * (base) and now, summed over statuses; cum[i] counts requests of at most le[i] s. */
#define ROUTE_MAX 16
#define ROUTE_BUCKETS 24

typedef struct route_counts {
    double requests, errors, sum, cum[ROUTE_BUCKETS];
} route_counts;

typedef struct route_sample {
    char route[96];
    double le[ROUTE_BUCKETS];
    int nle;
    route_counts base, now;
} route_sample;

typedef struct gateway_sample {
    int port;
    char roles[96];      /* the roles of its process (chorus_build_info) */
    gauge rss;
    route_sample routes[ROUTE_MAX];
    int nroutes;
} gateway_sample;

typedef struct pg_sample {
    const char *pidfile;
    gauge rss, pss;      /* summed over the postmaster and its children */
    int processes;
    bool pss_ok;         /* every process' smaps_rollup was readable */
} pg_sample;

typedef struct redis_sample {
    int port;
    gauge used, rss;     /* used_memory, used_memory_rss */
} redis_sample;

#define MAX_NODES 64

/* The machine's CPU over all its cores (/proc/stat), between the last two samples: busy
 * (user, nice, system, irq, softirq) and stolen by the hypervisor, in % of the whole.
 * Everything of the run shares the machine, so busy near 100 % means every wait for a
 * core adds to the latency; steal is time another guest of the host had our cores. */
typedef struct host_sample {
    unsigned long long busy, steal, total; /* ticks since boot, at the last sample */
    double busy_pct, steal_pct;            /* -1 until two samples */
    int cpus;
    bool seen;
    double syscall_ns;  /* host_calibrate: one cheap system call; 0 when not measured */
    double wakeup_us;   /* a pipe round trip between two processes: two wake-ups */
} host_sample;

typedef struct servers {
    node_sample nodes[MAX_NODES];
    int nnodes;
    gateway_sample gw;
    pg_sample pg;
    redis_sample redis;
    host_sample host;
} servers;

/* Sends req to port on loopback and reads the answer until the server closes (a short
 * timeout on each step): the answer, malloc'ed and NUL-terminated, or NULL. */
char *sample_ask(int port, const char *req, size_t len);
/* GET /metrics on port: the whole answer (headers too), as sample_ask. */
char *sample_get_metrics(int port);
/* Sets g1 and g2 from the lines "<n1><sep><number>" and "<n2><sep>..." of text, which it
 * frees (NULL: the server did not answer); false, setting neither, when one is missing. */
bool sample_pair(char *text, char sep, const char *n1, gauge *g1, const char *n2, gauge *g2);
/* Scrapes process_resident_memory_bytes and chorus_wss_connections from the node's
 * /metrics into n; false when the node did not answer. */
bool sample_node(node_sample *n);
/* Resident memory per session: growth over sessions added, between the first sample and
 * the peak (KiB); 0 when the node gained none. */
double node_kib_per_session(const node_sample *n);
/* The node's event loop over the run: how late its 100 ms timer ran on average (ms), and
 * the share of its ticks over 100 ms late; -1 when it reported no tick. */
double node_lag_ms(const node_sample *n);
double node_lag_slow_share(const node_sample *n);
/* Scrapes the gateway's /metrics: its RSS, roles, and the HTTP routes' counters. */
bool sample_gateway(gateway_sample *g);
/* A route's requests over the run (now - base), and their latency quantile q in ms
 * (linear within the bucket, as Prometheus' histogram_quantile; -1 without requests). */
route_counts route_delta(const route_sample *r);
double route_quantile_ms(const route_sample *r, double q);
/* Sums the RSS (and PSS) of the postmaster named by pg->pidfile and its children, from
 * /proc; false when the postmaster is not running. */
bool sample_postgres(pg_sample *pg);
/* INFO memory from Redis on loopback; false when it did not answer. */
bool sample_redis(redis_sample *r);
/* Reads /proc/stat: the busy and stolen shares since the last call; false when
 * unreadable. */
bool sample_host(host_sample *h);

/* ---- what the sessions read and send (load_frame.c) ----------------------------------- */
typedef enum { FRAME_OTHER, FRAME_MESSAGE, FRAME_RESUMED, FRAME_HELLO } frame_kind;

typedef struct frame_event {
    frame_kind kind;
    long long ch, seq;   /* FRAME_MESSAGE: message.created's channel and seq;
                            FRAME_HELLO: seq is the node's heartbeat_ms */
    uint64_t sent_us;    /* the send time at the head of its text, 0 if none */
} frame_event;

/* Reads one server frame: JSON text or, with msgpack, one msgpack map (same keys). */
frame_event frame_read(bool msgpack, const char *p, size_t n);
/* A client op's payload in the session's protocol, into out: its length, 0 when it does
 * not fit in cap. */
size_t frame_ping(bool msgpack, char *out, size_t cap);
size_t frame_resume(bool msgpack, long long ch, long long last_seq, char *out, size_t cap);

/* ---- the parent's time series and report (load_series.c, load_report.c) ---------------- */
typedef struct series_row {
    double t;                          /* seconds since the start */
    uint64_t connected, connecting, deliveries; /* deliveries: in that second */
    double p50_ms, p99_ms;             /* of that second's deliveries; -1 if none */
    double node_rss, gateway_rss, pg_rss, redis_rss; /* bytes; -1 when not sampled */
    double host_busy_pct, host_steal_pct; /* of the machine's CPU; -1 when not sampled */
} series_row;

typedef struct series {
    series_row *rows;
    int n, cap;
    uint64_t prev_deliveries;
    hist prev_latency;
} series;

/* Appends the row of the second that ends now; the row, or NULL when out of memory. */
const series_row *series_add(series *s, double t, const stats *all, const servers *sv);
void series_free(series *s);
/* The rows as a JSON array of objects (the TSV's columns; null: not measured), or NULL
 * when out of memory; the caller owns it. */
json_t *series_json(const series *s);
/* True when gnuplot is on PATH. */
bool plots_available(void);
/* Writes dir/series.tsv, then dir/connections.png and dir/latency.png with gnuplot (a
 * child process with a generated script, dir/plots.gp); 0, or -1 with a message. */
int plots_write(const series *s, const char *dir);

/* ---- the machine's CPU (load_host.c) ---------------------------------------------------- */
/* Takes the "cpu ..." line of /proc/stat: the shares since the line before it; false
 * when it is not such a line (h unchanged). */
bool host_update(host_sample *h, const char *line);

/* Times, before the load, what every delivery pays in the kernel: a cheap system call
 * and a round trip through a pipe to another process and back. Hosts differ by several
 * times here (a guest whose system calls cross the hypervisor), and the same scenario's
 * latency with them: this is what makes runs on two hosts comparable. 0 when it failed
 * (the fields stay 0). About 0.5 s. */
void host_calibrate(host_sample *h);

typedef struct host_summary {
    int seconds;          /* rows summarised; 0: the CPU was not sampled */
    bool with_deliveries; /* only the seconds with deliveries (else every second) */
    double busy_median, busy_max, steal_median, steal_max; /* % of the machine */
} host_summary;

/* The machine's CPU over the seconds of rows that had deliveries (every sampled second
 * when none had): what the latency figures lived with. */
host_summary host_summarize(const series_row *rows, int n);

/* The end-of-run summary on stdout and, with sc->report, the JSON report. */
void report_write(const scenario *sc, const population *p, const stats *all, double secs,
                  uint64_t peak, const servers *sv, const series *se);

/* Microseconds of CLOCK_REALTIME (posts carry it; receivers compare). */
uint64_t now_us(void);

#endif
