/* wss_internal.h - what the parts of the WSS node share: the node (wss.c), its sessions
 * (wss_session.c), the index and stream reading (wss_fanout.c), live membership
 * (wss_live.c), resume (wss_resume.c), the recent-event buffer (wss_recent.c) and the
 * send op (wss_send.c). */
#ifndef CHORUS_WSS_INTERNAL_H
#define CHORUS_WSS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>
#include <jansson.h>
#include <libwebsockets.h>

#include "chorus/app.h"
#include "chorus/event.h"
#include "chorus/metrics.h"
#include "chorus/ratelimit.h"
#include "wss_batch.h"

/* Close codes of API.md; 1001 is the standard "going away" (idle timeout); 1009 (frame
 * too big) comes from httpd_ws_collect. */
#define WSS_CLOSE_UNAUTHORIZED 4001
#define WSS_CLOSE_TOO_SLOW 4008
#define WSS_CLOSE_FULL 4009
#define WSS_CLOSE_IDLE 1001
#define WSS_CLOSE_TRY_AGAIN 1013 /* RFC 6455 "Try Again Later": reconnect after a while */
/* A client frame (reassembled from its fragments) may be at most this big. */
#define WSS_MAX_FRAME 65536
/* Queued frames written in one SERVER_WRITEABLE while the socket takes them. */
#define WSS_WRITES_PER_TURN 16
/* How long live events wait at the start of a session for a resume op. */
#define WSS_RESUME_GRACE_MS 500
/* Membership changes that may wait while a session's channel list loads, and joins
 * whose catch-up may wait behind a running resume. */
#define WSS_MAX_PENDING_CHANGES 256
/* Users one session may watch the presence of. */
#define WSS_MAX_WATCH 1000

/* One serialised server frame, shared by every session it is queued on (refcounted),
 * with LWS_PRE bytes of headroom for lws_write. created_us (0: not an event) feeds the
 * delivery-latency histogram when the frame reaches a socket. */
typedef struct wss_frame {
    int refs;
    bool binary;
    int64_t created_us;
    size_t len;
    unsigned char data[]; /* LWS_PRE + len */
} wss_frame;

typedef struct wss_node wss_node;
typedef struct wss_session wss_session;
typedef struct wss_fanout wss_fanout;

struct wss_node {
    app *app;
    const chorus_config *cfg;
    struct httpd *http;
    struct pgpool *pg;       /* the app's shared pool */
    wss_fanout *fanout;      /* NULL once the node stops */
    wss_batcher *members;    /* channel lists of new sessions (wss_members.c) */
    wss_batcher *resumes;    /* resume queries waiting or out (wss_resume.c) */
    ratelimit *writes;       /* the send op's per-user token buckets */
    const char *node_id;
    size_t secret_len;
    unsigned long long next_session;
    int sessions;
    wss_session *all;        /* every open session (a list: draining walks it) */
    bool draining;
    int capacity;            /* sessions at most; past it upgrades are closed with 4009 */
    bool ready;              /* reads every user partition: takes sessions */
    ev_timer starting;       /* retries that until it is so */
    ev_timer registry;       /* writes the node's registry entry every second */
    ev_timer registry_soon;  /* and in between, once the sessions moved by 1 % */
    int registered_sessions; /* the sessions of the last write */
    double events_per_s;     /* of the last second, for the registry */
    struct wss_presence_batch *presence_filling; /* changes of this loop iteration */
    ev_prepare presence_flush; /* sends them before the loop waits */
    bool presence_stopped;   /* the node stopped: no more changes */
    ev_timer drain_check;    /* while draining: polls until every session is gone */
    ev_timer shed;           /* moves shed_left sessions away, shed_step a tick */
    int shed_left, shed_step;
    double drain_deadline;
    double last_events;
    metrics_series *m_sessions, *m_closes_slow, *m_closes_idle, *m_frames_out;
    metrics_series *m_bytes_queued, *m_registry_errors, *m_latency;
    metrics_series *m_resume_buffer, *m_resume_pg, *m_resume_far, *m_resume_failed;
    metrics_series *m_sends, *m_send_errors;
};

typedef struct wss_held {
    int64_t ch, seq;
    wss_frame *frame;
    struct wss_held *next;
} wss_held;

typedef struct wss_qitem {
    wss_frame *frame;
    struct wss_qitem *next;
} wss_qitem;

/* A membership change that came while the channel list was loading. */
typedef struct wss_change {
    int64_t ws, ch, seq;   /* seq 0: a leave */
} wss_change;

struct wss_session {
    wss_node *node;
    struct lws *wsi;
    int64_t user_id;
    char id[24];
    bool msgpack;          /* chorus.msgpack: binary frames */
    wss_session *prev, *next; /* node->all */
    wss_qitem *head, *tail;
    size_t queued_bytes;
    int close_code;        /* a close to carry out at the next WRITEABLE */
    const char *close_why;
    bool drain;            /* close with 4009 once the queue is written (drain, rebalance) */
    const char *drain_why;
    unsigned char *rx;     /* the client frame being reassembled */
    size_t rx_len;
    int64_t *chans;        /* channels whose events this session gets */
    int nchans, chans_cap;
    int64_t *watching;     /* users whose presence the session asked for */
    int nwatching;
    int loading;           /* queries of the load still due */
    bool presence;         /* this session carries the user's presence on the node */
    int64_t typing_ch;     /* the last typing op, to drop repeats */
    double typing_at;
    bool loaded;           /* the channel list has come */
    bool greeted;          /* hello is queued (first): frames may be written */
    bool resume_promised;  /* the URL said resume=1: no grace, live events wait for it */
    wss_change *changes;   /* membership changes that came before it */
    int nchanges;
    int pending;           /* replies still due that point at the session */
    bool closed;           /* the connection is gone; free when no reply is due */
    bool peer_closed;      /* the client's close frame came: lws answers, we write no more */
    ev_timer idle;         /* closes a session silent for two heartbeats */
    double last_rx;
    /* Live channel events wait in the hold queue (bounded like the outbound queue)
     * while awaiting (from the session's start until its first op or
     * WSS_RESUME_GRACE_MS) and while resuming (missed events are read), so a client
     * gets the missed events first and each seq once. */
    bool awaiting;
    bool resuming;
    ev_timer grace;
    json_t *resume_later;  /* a resume that came before the channel list: run after it */
    wss_change *catchup;   /* joined channels whose events since the join are due */
    int ncatchup;
    wss_held *held_head, *held_tail;
    size_t held_bytes;
};

/* ---- wss_session.c ------------------------------------------------------------------ */
int wss_session_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user,
                         void *in, size_t len);

/* A frame holding text (JSON) or bytes (msgpack); refs 1. NULL when out of memory. */
wss_frame *wss_frame_new(const void *data, size_t len, bool binary);
void wss_frame_unref(wss_frame *f);
/* j as a frame of one protocol (JSON text or msgpack binary); NULL out of memory. */
wss_frame *wss_frame_encode(const json_t *j, bool msgpack);
/* The same frame in the other protocol (decoded and encoded again); NULL on failure. */
wss_frame *wss_frame_convert(const wss_frame *f);

/* Queues f on the session (taking a reference) and asks for a write; past the session's
 * bound the session is closed with 4008 instead. */
void wss_session_send(wss_session *s, wss_frame *f);
/* Queues the session's hello ahead of everything queued so far, and lets the queue be
 * written: until then nothing is (wss_session_writeable). */
void wss_session_greet(wss_session *s);
/* Serialises j for the session's protocol and queues it; takes j. */
void wss_session_send_json(wss_session *s, json_t *j);
void wss_session_send_error(wss_session *s, const char *code, const char *message);
bool wss_session_is_msgpack(const wss_session *s);
bool wss_session_has(const wss_session *s, int64_t ch);
/* A live event of channel ch for the session: sent if its seq is past *seen (the
 * session's highest seq of ch, then raised), or held while the session awaits its
 * first op or resumes. */
void wss_session_deliver(wss_session *s, int64_t ch, int64_t seq, wss_frame *f,
                         int64_t *seen);
/* An event the session gets whatever holds (user events, ephemeral ones). */
void wss_session_deliver_now(wss_session *s, wss_frame *f);
/* Sends f if seq is past what the session has of ch; records it. Resume uses it. */
void wss_session_send_seq(wss_session *s, int64_t ch, int64_t seq, wss_frame *f);
/* A resume (or catch-up) finished: sends the held events that are still new and ends
 * the hold unless the session still awaits its first op. */
void wss_session_resume_done(wss_session *s);
/* The first op came, or the grace time passed: live events flow unless a resume runs. */
void wss_session_end_await(wss_session *s);
/* One write to the socket (LWS_CALLBACK_SERVER_WRITEABLE); -1 closes the connection. */
int wss_session_writeable(wss_session *s);
/* Frees what the outbound and hold queues hold (the connection is gone). */
void wss_session_queue_free(wss_session *s);
/* A reply that pointed at the session came: false when the session was closed
 * meanwhile (it is freed then, once no other reply is due). */
bool wss_session_reply_came(wss_session *s);
/* Closes the session at its next write: 4008 and others drop the queue first. */
void wss_session_close(wss_session *s, int code, const char *why);
/* The node drains, or sheds load: the queue is written, then the session is closed
 * with 4009 and why, and the client reconnects through the gateway and resumes. */
void wss_session_drain(wss_session *s, const char *why);
/* Membership: the session gets ch from now on (true when it was new to it), or not. */
bool wss_session_add_channel(wss_session *s, int64_t ch, int64_t seen_seq);
void wss_session_remove_channel(wss_session *s, int64_t ch);
/* Appends c to one of the session's bounded change lists (WSS_MAX_PENDING_CHANGES);
 * past the bound the session is closed with 1013 and false returned. */
bool wss_change_push(wss_session *s, wss_change **list, int *n, wss_change c);

/* ---- wss_live.c: membership changes from the user streams --------------------------- */
/* A user event read from the stream of a user partition, for the local sessions of
 * its users of that partition. */
void wss_live_user_event(wss_node *node, int partition, const chorus_event *ev);
/* channel.deleted: every local session lets go of the channel. */
void wss_live_channel_deleted(wss_node *node, int64_t ch);
/* Changes that came while s loaded its channel list, applied once it has. */
void wss_live_apply_pending(wss_session *s);

/* The session watches exactly these users' presence from now on (n at most
 * WSS_MAX_WATCH); stops watching everyone with n 0. */
void wss_session_watch(wss_session *s, const int64_t *users, int n);

/* ---- wss_eph.c: typing and presence ------------------------------------------------- */
void wss_typing(wss_session *s, json_t *op);
/* {"op":"presence_sub","users":[...]}: whose presence the session gets. */
void wss_presence_sub(wss_session *s, json_t *op);
extern const char wss_presence_peers_sql[];
void wss_eph_typing_event(wss_node *n, const chorus_event *ev);
void wss_eph_presence_event(wss_node *n, const chorus_event *ev);
/* A session finished loading / is closing: the user's presence may change. */
void wss_presence_opened(wss_session *s);
void wss_presence_closed(wss_session *s);
/* Announces offline the users of nodes that died without closing their sessions. */
void wss_presence_sweep(wss_node *n);
/* The node's batch of presence changes: set up at start; sent at once at stop. */
void wss_presence_init(wss_node *n);
void wss_presence_flush(wss_node *n);

/* ---- wss_resume.c ------------------------------------------------------------------- */
/* {"op":"resume","positions":{...}} */
void wss_resume(wss_session *s, json_t *op);
/* The events of ch after seq (a channel the session just joined), sent before the
 * channel's live ones. */
void wss_resume_catchup(wss_session *s, int64_t ch, int64_t after);
extern const char wss_resume_sql[];
/* The node's resume queries: prepares the statement. */
int wss_resume_init(wss_node *node);
/* Fails the resumes still waiting (their sessions are closed with 1013). */
void wss_resume_stop(wss_node *node);
void wss_resume_free(wss_node *node);

/* ---- wss_send.c: {"op":"send",...} -------------------------------------------------- */
void wss_send(wss_session *s, json_t *op);
extern const char wss_send_sql[];

/* ---- wss_fanout.c: the node's index channel -> sessions and its stream reader -------- */
wss_fanout *wss_fanout_new(wss_node *node);
/* Stops reading (the node is stopping); the index stays until wss_fanout_free. */
void wss_fanout_stop(wss_fanout *f);
void wss_fanout_free(wss_fanout *f);
/* Subscribes what is still missing of the user partitions; true once all are read
 * (Redis must answer first). */
bool wss_fanout_ready(wss_fanout *f);
/* Subscribes again the partitions in use that the reader lost (once a second). */
void wss_fanout_repair(wss_fanout *f);
/* Events read from the streams so far (for events/s). */
double wss_fanout_events(const wss_fanout *f);
/* s receives the events of channel ch from now on; it has those up to seen_seq. */
int wss_fanout_add(wss_fanout *f, int64_t ch, wss_session *s, int64_t seen_seq);
void wss_fanout_remove(wss_fanout *f, int64_t ch, wss_session *s);
/* The highest seq of ch that s has (0 when none, or not a channel of s); set raises it. */
int64_t wss_fanout_seen(wss_fanout *f, int64_t ch, const wss_session *s);
void wss_fanout_set_seen(wss_fanout *f, int64_t ch, const wss_session *s, int64_t seq);
/* The user index: user events reach every session of their users. */
int wss_fanout_add_user(wss_fanout *f, wss_session *s);
void wss_fanout_remove_user(wss_fanout *f, wss_session *s);
/* The local sessions of user (n of them; valid until the index changes). */
wss_session *const *wss_fanout_user_sessions(wss_fanout *f, int64_t user, int *n);
/* The presence index: a user's presence reaches the sessions that watch them. */
int wss_fanout_watch(wss_fanout *f, int64_t user, wss_session *s);
void wss_fanout_unwatch(wss_fanout *f, int64_t user, wss_session *s);
wss_session *const *wss_fanout_watchers(wss_fanout *f, int64_t user, int *n);
/* The local sessions of channel ch, copied (the caller frees); NULL when none. */
wss_session **wss_fanout_channel_sessions(wss_fanout *f, int64_t ch, int *n);
/* Calls cb once every subscription made so far reads from a position taken before
 * now: a Postgres read started from cb then misses nothing the streams bring later.
 * CHORUS_OK when cb will run (once; ok false if Redis was lost). */
int wss_fanout_barrier(wss_fanout *f, void (*cb)(void *arg, bool ok), void *arg);
/* Whether a partition subscribed is still without a position ("$" being resolved). */
bool wss_fanout_resolving(const wss_fanout *f);
/* Sends the events of ch after seq from the node's recent-event buffer to s; false
 * when the buffer does not reach back that far (the caller reads Postgres). */
bool wss_fanout_resume(wss_fanout *f, int64_t ch, int64_t after, wss_session *s);

/* ---- wss_recent.c: a channel's recent events, contiguous by seq --------------------- */
typedef struct wss_recent_item {
    int64_t seq;
    wss_frame *json, *msgpack; /* either may be NULL; at least one is set */
} wss_recent_item;

typedef struct wss_recent {
    wss_recent_item *items; /* a ring of cap items */
    int cap, start, n;
} wss_recent;

/* Appends the event seq (its frames, one may be NULL); drops the oldest past cap. An
 * event that does not follow the last one (seq != last + 1) starts the buffer again:
 * only an unbroken run can answer a resume. *bytes tracks what all buffers hold. */
void wss_recent_push(wss_recent *r, int cap, int64_t seq, wss_frame *json, wss_frame *msgpack,
                     size_t *bytes);
/* Drops the oldest item (false when empty). */
bool wss_recent_drop_oldest(wss_recent *r, size_t *bytes);
/* True when the buffer holds every event after seq `after` that the node has read:
 * then its items past `after` are what was missed. */
bool wss_recent_covers(const wss_recent *r, int64_t after);
int64_t wss_recent_last(const wss_recent *r);
/* The i-th item (0 = oldest). */
wss_recent_item *wss_recent_at(wss_recent *r, int i);
void wss_recent_clear(wss_recent *r, size_t *bytes);

#endif
