/* wss_internal.h - what the parts of the WSS node share: the node (wss.c), its sessions
 * (wss_session.c) and the frames they queue. */
#ifndef CHORUS_WSS_INTERNAL_H
#define CHORUS_WSS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
    metrics_series *m_sessions, *m_closes_slow, *m_frames_out, *m_bytes_queued;
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

/* wss_fanout.c: the node's index channel -> sessions and its stream reader. */
wss_fanout *wss_fanout_new(wss_node *node);
/* Stops reading (the node is stopping); the index stays until wss_fanout_free. */
void wss_fanout_stop(wss_fanout *f);
void wss_fanout_free(wss_fanout *f);
/* s receives the events of channel ch from now on. */
int wss_fanout_add(wss_fanout *f, int64_t ch, wss_session *s);
void wss_fanout_remove(wss_fanout *f, int64_t ch, wss_session *s);

#endif
