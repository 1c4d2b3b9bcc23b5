/* wss_live.c - live membership: the user streams change what a session receives.
 *
 * The outbox copies every membership event to the user partition of its users
 * (docs/OUTBOX.md). channel.created and member.joined add the channel to each local
 * session of the user, at once, with a catch-up of the channel's events since the join
 * (the node may only now start reading its partition); member.left and workspace.left
 * remove it. The session is told with channel.joined / channel.left (API.md user
 * events); other user events (read.updated, workspace.*) are passed on as they are.
 *
 * A change that comes while the session is still loading its channel list waits and is
 * applied after it: the list may be older than the change (it was read after the user
 * streams were positioned, so it is never newer than the events still to come).
 */
#include <stdlib.h>
#include <string.h>

#include "chorus/log.h"
#include "wss_internal.h"

static void tell(wss_session *s, const char *type, int64_t ws, int64_t ch, int64_t seq)
{
    json_t *d = json_pack("{s:I}", "channel_id", (json_int_t)ch);
    if (d && seq > 0)
        json_object_set_new(d, "seq", json_integer(seq));
    wss_session_send_json(s, json_pack("{s:s,s:I,s:o}", "t", type, "ws", (json_int_t)ws,
                                       "d", d ? d : json_object()));
}

static void join(wss_session *s, int64_t ws, int64_t ch, int64_t seq)
{
    if (!wss_session_add_channel(s, ch, seq - 1))
        return; /* had it already (the list was newer than the event), or no memory */
    tell(s, "channel.joined", ws, ch, seq);
    wss_resume_catchup(s, ch, seq - 1);
}

static void leave(wss_session *s, int64_t ws, int64_t ch)
{
    if (!wss_session_has(s, ch))
        return;
    wss_session_remove_channel(s, ch);
    tell(s, "channel.left", ws, ch, 0);
}

/* seq 0: a leave. Before the list has loaded the change waits (bounded). */
static void change(wss_session *s, int64_t ws, int64_t ch, int64_t seq)
{
    if (s->loaded) {
        if (seq > 0)
            join(s, ws, ch, seq);
        else
            leave(s, ws, ch);
        return;
    }
    wss_change_push(s, &s->changes, &s->nchanges, (wss_change){ws, ch, seq});
}

void wss_live_apply_pending(wss_session *s)
{
    for (int i = 0; i < s->nchanges; i++) {
        if (s->changes[i].seq > 0)
            join(s, s->changes[i].ws, s->changes[i].ch, s->changes[i].seq);
        else
            leave(s, s->changes[i].ws, s->changes[i].ch);
    }
    s->nchanges = 0;
    free(s->changes);
    s->changes = NULL;
}

static void workspace_left(wss_session *s, const chorus_event *ev)
{
    json_t *chans = json_object_get(ev->data, "channels");
    size_t i;
    json_t *v;
    json_array_foreach(chans, i, v)
        if (json_is_integer(v))
            change(s, ev->workspace_id, json_integer_value(v), 0);
}

static void pass_on(wss_session *s, const chorus_event *ev)
{
    chorus_event user_ev = *ev; /* user events carry no ch/seq (API.md) */
    user_ev.channel_id = 0;
    user_ev.seq = 0;
    wss_session_send_json(s, event_to_frame_json(&user_ev));
}

static void apply(wss_session *s, const chorus_event *ev)
{
    if (strcmp(ev->type, "channel.created") == 0 || strcmp(ev->type, "member.joined") == 0) {
        if (ev->channel_id > 0 && ev->seq > 0)
            change(s, ev->workspace_id, ev->channel_id, ev->seq);
    } else if (strcmp(ev->type, "member.left") == 0) {
        if (ev->channel_id > 0)
            change(s, ev->workspace_id, ev->channel_id, 0);
    } else {
        if (strcmp(ev->type, "workspace.left") == 0)
            workspace_left(s, ev);
        pass_on(s, ev);
    }
}

void wss_live_user_event(wss_node *node, int partition, const chorus_event *ev)
{
    if (!node->fanout)
        return;
    for (size_t i = 0; i < ev->n_users; i++) {
        int64_t u = ev->users[i];
        /* an event for users of several partitions is in each of their streams */
        if (u <= 0 || u % node->cfg->partitions != partition)
            continue;
        int n;
        wss_session *const *ss = wss_fanout_user_sessions(node->fanout, u, &n);
        for (int k = 0; k < n; k++)
            apply(ss[k], ev);
    }
}

void wss_live_channel_deleted(wss_node *node, int64_t ch)
{
    int n;
    wss_session **ss = wss_fanout_channel_sessions(node->fanout, ch, &n);
    for (int i = 0; i < n; i++)
        wss_session_remove_channel(ss[i], ch);
    free(ss);
}
