/* wss_internal.h - what the parts of the WSS node share: the node (wss.c), its sessions
 * (wss_session.c) and the frames they queue. */
#ifndef CHORUS_WSS_INTERNAL_H
#define CHORUS_WSS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>
#include <jansson.h>
#include <libwebsockets.h>

#include "chorus/app.h"
#include "chorus/metrics.h"

/* Close codes of API.md. */
#define WSS_CLOSE_UNAUTHORIZED 4001
#define WSS_CLOSE_TOO_SLOW 4008
#define WSS_CLOSE_FULL 4009
#define WSS_CLOSE_TOO_BIG 1009
/* A client frame (reassembled from its fragments) may be at most this big. */
#define WSS_MAX_FRAME 65536
#define WSS_HEARTBEAT_MS 30000
/* How long live events wait at the start of a session for a resume op. */
#define WSS_RESUME_GRACE_MS 500

/* One serialised server frame, shared by every session it is queued on (refcounted),
 * with LWS_PRE bytes of headroom for lws_write. */
typedef struct wss_frame {
    int refs;
    bool binary;
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
    const char *node_id;
    size_t secret_len;
    unsigned long long next_session;
    int sessions;
    bool draining;
    int capacity;            /* sessions at most; past it upgrades are closed with 4009 */
    ev_timer registry;       /* writes the node's registry entry every second */
    double last_events;
    metrics_series *m_sessions, *m_closes_slow, *m_frames_out, *m_bytes_queued;
    metrics_series *m_registry_errors;
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

struct wss_session {
    wss_node *node;
    struct lws *wsi;
    int64_t user_id;
    char id[24];
    bool msgpack;          /* chorus.msgpack: binary frames */
    wss_qitem *head, *tail;
    size_t queued_bytes;
    int close_code;        /* a close to carry out at the next WRITEABLE */
    const char *close_why;
    unsigned char *rx;     /* the client frame being reassembled */
    size_t rx_len;
    int64_t *chans;        /* channels whose events this session gets */
    int nchans;
    int pending;           /* Postgres replies still due: they point at the session */
    bool closed;           /* the connection is gone; free when no reply is due */
    /* Live events wait here (bounded like the queue) from the session's start until
     * its first op or WSS_RESUME_GRACE_MS, and while a resume is read from Postgres,
     * so that a resuming client gets the missed events first and no seq twice. */
    bool holding;
    bool resuming;         /* a resume query is in flight */
    ev_timer grace;
    json_t *resume_later;  /* a resume that came before the channel list: run after it */
    wss_held *held_head, *held_tail;
    size_t held_bytes;
};


/* wss_session.c */
int wss_session_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user,
                         void *in, size_t len);

/* A frame holding text (JSON) or bytes (msgpack); refs 1. NULL when out of memory. */
wss_frame *wss_frame_new(const void *data, size_t len, bool binary);
void wss_frame_unref(wss_frame *f);

/* Queues f on the session (taking a reference) and asks for a write; past the session's
 * bound the session is closed with 4008 instead. */
void wss_session_send(wss_session *s, wss_frame *f);
/* Serialises j for the session's protocol and queues it; takes j. */
void wss_session_send_json(wss_session *s, json_t *j);
/* j as a frame of one protocol (JSON text or msgpack binary); NULL out of memory. */
wss_frame *wss_frame_encode(const json_t *j, bool msgpack);
bool wss_session_is_msgpack(const wss_session *s);
/* A live event of channel ch for the session: sent, or held while a resume runs. */
void wss_session_deliver(wss_session *s, int64_t ch, int64_t seq, wss_frame *f);
/* Sends the held events not already covered by a resume (resumed_max(ch) gives the
 * highest seq the resume sent for ch; resumed_max NULL: none) and ends the hold. */
void wss_session_release_held(wss_session *s, int64_t (*resumed_max)(void *, int64_t),
                              void *arg);
/* A reply that pointed at the session came: false when the session was closed
 * meanwhile (it is freed then, once no other reply is due). */
bool wss_session_reply_came(wss_session *s);

/* wss_resume.c: {"op":"resume","positions":{...}} */
void wss_resume(wss_session *s, json_t *op);
extern const char wss_resume_sql[];

/* wss_fanout.c: the node's index channel -> sessions and its stream reader. */
wss_fanout *wss_fanout_new(wss_node *node);
/* Stops reading (the node is stopping); the index stays until wss_fanout_free. */
void wss_fanout_stop(wss_fanout *f);
void wss_fanout_free(wss_fanout *f);
/* Events read from the streams so far (for events/s). */
double wss_fanout_events(const wss_fanout *f);
/* s receives the events of channel ch from now on. */
int wss_fanout_add(wss_fanout *f, int64_t ch, wss_session *s);
void wss_fanout_remove(wss_fanout *f, int64_t ch, wss_session *s);

#endif
