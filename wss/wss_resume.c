/* wss_resume.c - {"op":"resume","positions":{"<ch>":<last seen seq>,...}} (API.md).
 *
 * The missed events come from the outbox, which keeps every published channel event for
 * outbox_retention_s (docs/OUTBOX.md): one query for all the channels asked, at most
 * WSS_RESUME_MAX events per channel, in seq order. A channel further behind than that,
 * or whose missed events retention has already deleted, gets an error frame
 * "resume_too_far" and the client pages its history over REST. Then {"t":"resumed"}.
 *
 * While the query runs the session holds its live events; afterwards it sends those the
 * resume did not already cover, so the client sees each seq once, in order.
 * Only the session's own channels can be resumed (they are exactly its memberships).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chorus/buf.h"
#include "chorus/event.h"
#include "chorus/log.h"
#include "chorus/pgpool.h"
#include "chorus/status.h"
#include "wss_internal.h"

#define WSS_RESUME_MAX 1000
#define WSS_RESUME_CHANNELS 1000

enum { C_CH, C_SEQ, C_TYPE, C_WS, C_PAYLOAD, C_AT, C_LAST };

const char wss_resume_sql[] =
    "SELECT p.ch, o.seq, o.event_type, o.workspace_id, o.payload::text,"
    "       (extract(epoch FROM o.created_at) * 1000000)::bigint,"
    "       (SELECT last_seq FROM channels WHERE id = p.ch)"
    "  FROM unnest($1::bigint[], $2::bigint[]) AS p(ch, after)"
    "  LEFT JOIN LATERAL (SELECT * FROM outbox"
    "                      WHERE stream = 'ch' AND channel_id = p.ch AND seq > p.after"
    "                      ORDER BY seq LIMIT $3) o ON true"
    " ORDER BY p.ch, o.seq";

typedef struct resumed {
    int64_t ch, after, max_sent, last_seq;
    int rows;
    bool gap;
} resumed;

typedef struct resume_req {
    wss_session *s;
    resumed *chans;
    int n;
} resume_req;

static int64_t resumed_max(void *arg, int64_t ch)
{
    resume_req *r = arg;
    for (int i = 0; i < r->n; i++)
        if (r->chans[i].ch == ch)
            return r->chans[i].max_sent;
    return 0;
}

static resumed *find(resume_req *r, int64_t ch)
{
    for (int i = 0; i < r->n; i++)
        if (r->chans[i].ch == ch)
            return &r->chans[i];
    return NULL;
}

/* One outbox row as the client frame of the session's protocol. */
static void send_row(wss_session *s, PGresult *res, int i, int64_t ch)
{
    chorus_event ev = {.channel_id = ch};
    snprintf(ev.type, sizeof ev.type, "%s", PQgetvalue(res, i, C_TYPE));
    ev.seq = atoll(PQgetvalue(res, i, C_SEQ));
    ev.workspace_id = atoll(PQgetvalue(res, i, C_WS));
    ev.created_at_us = atoll(PQgetvalue(res, i, C_AT));
    ev.data = json_loads(PQgetvalue(res, i, C_PAYLOAD), 0, NULL);
    json_t *frame = event_to_frame_json(&ev);
    if (frame)
        wss_session_send_json(s, frame);
    event_clear(&ev);
}

static void report(wss_session *s, resume_req *r)
{
    for (int i = 0; i < r->n; i++) {
        resumed *c = &r->chans[i];
        bool too_far = c->gap || (c->rows == WSS_RESUME_MAX && c->last_seq > c->max_sent);
        if (too_far)
            wss_session_send_json(
                s, json_pack("{s:s,s:s,s:I,s:I,s:s}", "t", "error", "code", "resume_too_far",
                             "ch", (json_int_t)c->ch, "seq", (json_int_t)c->max_sent,
                             "message", "page the channel's history over REST from seq"));
    }
    wss_session_send_json(s, json_pack("{s:s}", "t", "resumed"));
}

static void on_rows(void *arg, PGresult *res, const char *err)
{
    resume_req *r = arg;
    wss_session *s = r->s;
    if (wss_session_reply_came(s)) {
        if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
            log_warn("wss session %s: resume: %s", s->id, res ? PQresultErrorMessage(res) : err);
            wss_session_release_held(s, resumed_max, r);
            wss_session_send_json(s, json_pack("{s:s,s:s,s:s}", "t", "error", "code",
                                               "unavailable", "message", "resume failed: retry"));
        } else {
            for (int i = 0; i < PQntuples(res); i++) {
                resumed *c = find(r, atoll(PQgetvalue(res, i, C_CH)));
                if (!c)
                    continue;
                c->last_seq = atoll(PQgetvalue(res, i, C_LAST));
                if (PQgetisnull(res, i, C_SEQ))
                    continue; /* nothing missed */
                int64_t seq = atoll(PQgetvalue(res, i, C_SEQ));
                if (c->rows == 0 && seq != c->after + 1)
                    c->gap = true; /* retention took the first missed ones */
                if (c->gap)
                    continue;
                send_row(s, res, i, c->ch);
                c->max_sent = seq;
                c->rows++;
            }
            report(s, r);
            wss_session_release_held(s, resumed_max, r);
        }
    }
    free(r->chans);
    free(r);
}

/* The positions of the op, each a channel of the session; NULL (and an error frame
 * sent) when the op is malformed. */
static resume_req *parse(wss_session *s, json_t *op)
{
    json_t *pos = json_object_get(op, "positions");
    size_t n = json_is_object(pos) ? json_object_size(pos) : 0;
    const char *why = !json_is_object(pos) ? "positions must be an object"
                      : n == 0             ? "positions is empty"
                      : n > WSS_RESUME_CHANNELS ? "too many channels"
                                                : NULL;
    resume_req *r = why ? NULL : calloc(1, sizeof *r);
    if (r)
        r->chans = calloc(n, sizeof *r->chans);
    const char *key;
    json_t *v;
    json_object_foreach(pos, key, v) {
        if (!r || !r->chans)
            break;
        char *end;
        long long ch = strtoll(key, &end, 10);
        bool mine = false;
        for (int i = 0; i < s->nchans; i++)
            mine = mine || s->chans[i] == ch;
        if (*end || ch <= 0 || !json_is_integer(v) || json_integer_value(v) < 0) {
            why = "positions maps channel ids to seqs (integers >= 0)";
            break;
        }
        if (!mine) {
            why = "a channel of positions is not one of the session's channels";
            break;
        }
        r->chans[r->n++] = (resumed){.ch = ch, .after = json_integer_value(v),
                                     .max_sent = json_integer_value(v)};
    }
    if (why || !r || !r->chans) {
        wss_session_send_json(s, json_pack("{s:s,s:s,s:s}", "t", "error", "code", "bad_resume",
                                           "message", why ? why : "out of memory"));
        if (r)
            free(r->chans);
        free(r);
        return NULL;
    }
    return r;
}

void wss_resume(wss_session *s, json_t *op)
{
    if (s->pending && !s->resuming && !s->resume_later) {
        /* the channel list is still being read: the resume runs right after it */
        s->resume_later = json_incref(op);
        return;
    }
    if (s->resuming || s->pending) {
        wss_session_send_json(s, json_pack("{s:s,s:s,s:s}", "t", "error", "code", "busy",
                                           "message", "a resume is under way: retry after "
                                                      "\"resumed\""));
        return;
    }
    resume_req *r = parse(s, op);
    if (!r)
        return;
    r->s = s;
    buf chs, afters;
    buf_init(&chs, 0);
    buf_init(&afters, 0);
    for (int i = 0; i < r->n; i++) {
        buf_printf(&chs, "%s%lld", i ? "," : "{", (long long)r->chans[i].ch);
        buf_printf(&afters, "%s%lld", i ? "," : "{", (long long)r->chans[i].after);
    }
    buf_puts(&chs, "}");
    buf_puts(&afters, "}");
    char limit[16];
    snprintf(limit, sizeof limit, "%d", WSS_RESUME_MAX);
    const char *params[] = {chs.data, afters.data, limit};
    if (pgpool_query(s->node->pg, "wss_resume", 3, params, on_rows, r) == CHORUS_OK) {
        s->pending++;
        s->resuming = true;
        s->holding = true;
    } else {
        wss_session_send_json(s, json_pack("{s:s,s:s,s:s}", "t", "error", "code",
                                           "unavailable", "message", "resume failed: retry"));
        free(r->chans);
        free(r);
    }
    buf_free(&chs);
    buf_free(&afters);
}
