/* wss_send.c - {"op":"send","ch":<ch>,"text":"...","client_msg_id":"..."} (API.md).
 *
 * The same write path as POST .../messages: the same SQL function, in one transaction
 * with its outbox event, the same per-user write rate limit (a token bucket per node,
 * like the gateway's per process), and the same retry when the function lost a race
 * with an identical request. The answer is {"t":"ack","client_msg_id":..,"id":..,
 * "seq":..}, or an error frame with the REST error's code and the client_msg_id; the
 * message itself reaches every member, the sender's sessions too, through the stream.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chorus/log.h"
#include "chorus/pgpool.h"
#include "chorus/status.h"
#include "wss_internal.h"

#define SEND_RETRIES 3

/* channels c: the op names only the channel; its workspace comes from the row. */
const char wss_send_sql[] =
    "SELECT m.status, m.body::text FROM channels c,"
    "       LATERAL api_message_post($1, c.workspace_id, c.id, $3::jsonb, $4) m"
    " WHERE c.id = $2";

typedef struct send_req {
    wss_session *s;
    app *app;             /* for the knock, which does not need the session */
    json_t *cmid;         /* the op's client_msg_id (or NULL), echoed back */
    char user[24], ch[24], parts[16];
    char *body;
    int tries;
} send_req;

static void req_free(send_req *r)
{
    json_decref(r->cmid);
    free(r->body);
    free(r);
}

static void fail(wss_session *s, json_t *cmid, const char *code, const char *message)
{
    metrics_inc(s->node->m_send_errors);
    json_t *e = json_pack("{s:s,s:s,s:s}", "t", "error", "code", code, "message", message);
    if (e && cmid)
        json_object_set(e, "client_msg_id", cmid);
    wss_session_send_json(s, e);
}

static bool retryable(const PGresult *res)
{
    const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    return st && (strcmp(st, "40001") == 0 || strcmp(st, "40P01") == 0 ||
                  (strcmp(st, "CH409") == 0 && msg && strcmp(msg, "retry_idempotent") == 0));
}

/* An error of the api function (SQLSTATE CHnnn: message = code, detail = text). */
static void fail_db(send_req *r, const PGresult *res, const char *err)
{
    const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *code = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *detail = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL) : NULL;
    if (st && strncmp(st, "CH", 2) == 0 && code) {
        fail(r->s, r->cmid, code, detail ? detail : code);
    } else {
        log_warn("wss session %s: send: %s", r->s->id,
                 res ? PQresultErrorMessage(res) : (err ? err : "no reply"));
        fail(r->s, r->cmid, "unavailable", "the message was not stored: send it again");
    }
}

static void ack(send_req *r, PGresult *res)
{
    json_t *m = PQntuples(res) == 1 ? json_loads(PQgetvalue(res, 0, 1), 0, NULL) : NULL;
    json_t *id = json_object_get(m, "id"), *seq = json_object_get(m, "seq");
    if (!json_is_integer(id) || !json_is_integer(seq)) {
        fail(r->s, r->cmid, "not_found", "channel not found");
    } else {
        metrics_inc(r->s->node->m_sends);
        json_t *a = json_pack("{s:s,s:O,s:O}", "t", "ack", "id", id, "seq", seq);
        if (a && r->cmid)
            json_object_set(a, "client_msg_id", r->cmid);
        wss_session_send_json(r->s, a);
    }
    json_decref(m);
}

static int run(send_req *r);

static void on_posted(void *arg, PGresult *res, const char *err)
{
    send_req *r = arg;
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK)
        app_outbox_knock(r->app); /* stored: its event waits in the outbox */
    if (!wss_session_reply_came(r->s)) {
        req_free(r);
        return;
    }
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK)
        ack(r, res);
    else if (res && retryable(res) && ++r->tries < SEND_RETRIES && run(r) == CHORUS_OK)
        return;
    else
        fail_db(r, res, err);
    req_free(r);
}

static int run(send_req *r)
{
    const char *params[] = {r->user, r->ch, r->body, r->parts};
    int rc = pgpool_query(r->s->node->pg, "wss_send", 4, params, on_posted, r);
    if (rc == CHORUS_OK)
        r->s->pending++;
    return rc;
}

/* The message fields of the op as the REST body; NULL (and *why) when malformed. */
static char *body_of(json_t *op, const char **why)
{
    json_t *b = json_object();
    static const char *const keys[] = {"text", "client_msg_id", "parent_id"};
    for (size_t i = 0; b && i < sizeof keys / sizeof keys[0]; i++)
        if (json_object_get(op, keys[i]))
            json_object_set(b, keys[i], json_object_get(op, keys[i]));
    char *text = b ? json_dumps(b, JSON_COMPACT) : NULL;
    json_decref(b);
    *why = text ? NULL : "out of memory";
    return text;
}

void wss_send(wss_session *s, json_t *op)
{
    json_t *cmid = json_object_get(op, "client_msg_id");
    json_t *ch = json_object_get(op, "ch");
    if (!json_is_integer(ch) || json_integer_value(ch) <= 0) {
        fail(s, cmid, "validation_failed", "ch must be a channel id");
        return;
    }
    double retry = 0;
    if (!ratelimit_take(s->node->writes, s->user_id, ev_now(app_loop(s->node->app)), &retry)) {
        char msg[96];
        snprintf(msg, sizeof msg, "too many writes: retry after %.1f s", retry);
        fail(s, cmid, "rate_limited", msg);
        return;
    }
    send_req *r = calloc(1, sizeof *r);
    const char *why = "out of memory";
    if (r)
        r->body = body_of(op, &why);
    if (!r || !r->body) {
        fail(s, cmid, "internal", why);
        if (r)
            req_free(r);
        return;
    }
    r->s = s;
    r->app = s->node->app;
    r->cmid = json_incref(cmid);
    snprintf(r->user, sizeof r->user, "%lld", (long long)s->user_id);
    snprintf(r->ch, sizeof r->ch, "%lld", (long long)json_integer_value(ch));
    snprintf(r->parts, sizeof r->parts, "%d", s->node->cfg->partitions);
    if (run(r) != CHORUS_OK) {
        fail(s, cmid, "unavailable", "the database is busy: send it again");
        req_free(r);
    }
}
