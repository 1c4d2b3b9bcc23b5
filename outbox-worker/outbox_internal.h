/* outbox_internal.h - what outbox.c (the role), outbox_lease.c (membership and
 * housekeeping) and outbox_lane.c (the publishing batches) share. docs/OUTBOX.md is the
 * design; this header is the wiring.
 *
 * A worker owns a set of partitions (outbox_lease.c) and splits them over its lanes.
 * Each lane runs one batch at a time on its own connection: BEGIN, take the unpublished
 * rows of its partitions under their advisory locks, XADD them pipelined, mark them
 * published, COMMIT. Lanes overlap each other's Postgres and Redis waits.
 */
#ifndef CHORUS_OUTBOX_INTERNAL_H
#define CHORUS_OUTBOX_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include <ev.h>

#include "chorus/app.h"
#include "chorus/buf.h"
#include "chorus/metrics.h"

typedef struct outbox_worker outbox_worker;

/* The namespace (first key) of the per-partition advisory locks; sql/004 says why. */
#define OUTBOX_LOCK_SPACE "1130914386"

typedef struct outbox_lane {
    outbox_worker *w;
    int index;
    int *parts;          /* partitions of this lane (room for cfg partitions) */
    int nparts;
    unsigned rotate;     /* where the next batch starts in parts: fairness */
    ev_timer timer;      /* next batch */
    double delay;        /* current poll or backoff delay, seconds */
    bool busy;           /* waiting for a look, or a batch under way */
    bool waiting;        /* idle, waiting for the worker's look (outbox_lane.c) */
    bool hot;            /* the last batch found rows: the next one skips the look */
    bool knocked;        /* a knock came while busy: rows may have missed its snapshot */
    struct pgconn *conn;
    /* the batch in flight */
    int nrows;           /* rows selected */
    int nsent;           /* rows whose entries were all sent (a prefix of the rows) */
    int pending;         /* XADD replies still to come */
    bool sending;        /* inside the send loop: replies must not finish the batch */
    bool failed;
    double started;      /* ev_now at BEGIN */
    int64_t *created_us; /* created_at of the sent rows, for the lag histogram */
    buf ids;             /* {"(0,1)",...}: ctids of the sent rows, the mark's array */
    buf entry;           /* one row's msgpack envelope */
    int *stream_parts;   /* one row's target streams */
    buf bell;            /* the batch's streams, for the doorbell (rstream.h) */
    unsigned *bell_gen;  /* per stream: the batch that last added it to bell */
    unsigned gen;        /* this batch */
} outbox_lane;

struct outbox_worker {
    app *app;
    const chorus_config *cfg;
    struct ev_loop *loop;
    const char *node_id;
    struct pgpool *pg;       /* the role's own pool: lanes + 1 connections */
    struct rclient *redis;   /* the role's own client, so a stop can finish its batches */
    struct rclient *knock;   /* blocked on the knock stream (outbox_knock.c) */
    bool knock_reading;      /* an XREAD of it is under way */
    char knock_id[48];       /* the last knock read ("$" at first) */
    ev_timer knock_retry;    /* after an error reply: read again later */
    outbox_lane *lanes;
    int nlanes;
    int *part_lane;          /* partition -> the lane that owns it, -1 if none */
    bool looking;            /* a look is under way (outbox_lane.c) */
    bool look_again;         /* a knock came meanwhile: look once more after it */
    int max_commands;        /* Redis commands (XADDs, version bumps) one batch may
                                have in flight */
    char maxlen[24];         /* stream_maxlen as text for XADD */
    /* membership (outbox_lease.c) */
    ev_timer beat;
    bool hk_busy;            /* a housekeeping query chain is under way */
    int *owned;              /* partitions owned now, ascending */
    int nowned;
    int rank, nlive;         /* rank -1: no valid lease (no beat answered lately) */
    double lease_until;      /* ev_now after which the lease is no longer ours */
    double next_stats;       /* ev_now of the next backlog/retention round */
    int trim_rounds;         /* retention batches run in this round */
    bool stopping;
    bool left;               /* the worker row has been deleted (or given up on) */
    /* metrics */
    metrics_series *m_lag, *m_batch_rows, *m_batch_seconds, *m_events, *m_entries;
    metrics_series *m_looks, *m_batches_published, *m_batches_empty;
    metrics_series *m_err_pg, *m_err_redis, *m_err_encode;
    metrics_series *m_owned, *m_live, *m_backlog, *m_oldest, *m_trimmed;
};

/* outbox_lane.c */
int outbox_lanes_init(outbox_worker *w);
void outbox_lanes_free(outbox_worker *w);
/* Spreads the owned partitions over the lanes and wakes lanes that got work. */
void outbox_lanes_assign(outbox_worker *w);
/* Stops every lane's timer; true when no batch is under way. */
bool outbox_lanes_quiet(outbox_worker *w);
/* Rows were just committed somewhere: idle lanes look now, busy ones look again. */
void outbox_lanes_knock(outbox_worker *w);

/* outbox_knock.c */
/* Creates w->knock and starts reading the knock stream whenever it is connected. */
int outbox_knock_start(outbox_worker *w);
void outbox_knock_free(outbox_worker *w);

/* outbox_lease.c */
void outbox_lease_start(outbox_worker *w);
/* Registers the statements of the lease and housekeeping queries on w->pg. */
int outbox_lease_prepare(outbox_worker *w);
/* Called by outbox.c when the worker is stopping and every lane is quiet: deletes the
 * worker row (so others take its partitions at their next beat) and frees the clients. */
void outbox_lease_leave(outbox_worker *w);
/* Frees the role's pool and Redis clients (deferred by them when inside a callback). */
void outbox_free_clients(outbox_worker *w);

/* outbox.c: a lane finished its batch (used during the stop). */
void outbox_lane_idle(outbox_worker *w);

#endif
