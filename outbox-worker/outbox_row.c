/* outbox_row.c - an outbox row as a stream entry; partition ownership (outbox_row.h). */
#include "outbox_row.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chorus/event.h"
#include "chorus/status.h"

#define FAMILY_CH 0
#define FAMILY_U 1
#define PART(family, p) ((family) * 65536 + (p))

static bool parse_i64(const char *s, int64_t *out)
{
    if (!s || !*s)
        return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

int outbox_parse_bigint_array(const char *text, int64_t *out, size_t max)
{
    size_t len = text ? strlen(text) : 0;
    if (len < 2 || text[0] != '{' || text[len - 1] != '}')
        return -1;
    if (len == 2)
        return 0;
    size_t n = 0;
    const char *p = text + 1;
    for (;;) {
        char *end;
        errno = 0;
        if (*p < '0' && *p != '-')
            return -1; /* strtoll would skip spaces or accept '+' */
        long long v = strtoll(p, &end, 10);
        if (errno || end == p || n == max)
            return -1;
        out[n++] = v;
        if (*end == '}')
            return end == text + len - 1 ? (int)n : -1;
        if (*end != ',')
            return -1;
        p = end + 1;
    }
}

/* Adds part to parts unless it is there already (user lists are short next to the
 * per-row cost of an XADD, so a linear scan is fine). */
static void add_part(int *parts, size_t *n, int part)
{
    for (size_t i = 0; i < *n; i++)
        if (parts[i] == part)
            return;
    parts[(*n)++] = part;
}

/* The columns other than payload and users, parsed into ev. */
static int parse_header(const outbox_row *row, chorus_event *ev, bool *is_channel, char *err,
                        size_t errlen)
{
    *is_channel = strcmp(row->stream, "ch") == 0;
    if (!*is_channel && strcmp(row->stream, "u") != 0) {
        chorus_set_err(err, errlen, "stream '%s' is neither ch nor u", row->stream);
        return CHORUS_ERR;
    }
    if (!parse_i64(row->id, &ev->id) || !parse_i64(row->workspace_id, &ev->workspace_id) ||
        !parse_i64(row->created_us, &ev->created_at_us)) {
        chorus_set_err(err, errlen, "id, workspace_id or created_at is not an integer");
        return CHORUS_ERR;
    }
    if (*is_channel && (!parse_i64(row->channel_id, &ev->channel_id) ||
                        !parse_i64(row->seq, &ev->seq) || ev->channel_id < 0 || ev->seq < 1)) {
        chorus_set_err(err, errlen, "channel event without a channel id and a seq");
        return CHORUS_ERR;
    }
    if (strlen(row->event_type) >= EVENT_TYPE_MAX) {
        chorus_set_err(err, errlen, "event type too long");
        return CHORUS_ERR;
    }
    strcpy(ev->type, row->event_type);
    return CHORUS_OK;
}

/* ev's users from the row, and the stream parts of the event. */
static int collect_targets(const outbox_row *row, bool is_channel, int partitions,
                           chorus_event *ev, int *parts, size_t max_parts, size_t *nparts,
                           char *err, size_t errlen)
{
    *nparts = 0;
    if (is_channel)
        parts[(*nparts)++] = PART(FAMILY_CH, (int)(ev->channel_id % partitions));
    if (row->user_ids && *row->user_ids) {
        size_t cap = 1;
        for (const char *c = row->user_ids; *c; c++)
            cap += *c == ',';
        if (cap > EVENT_MAX_USERS)
            cap = EVENT_MAX_USERS;
        ev->users = malloc(cap * sizeof *ev->users);
        int n = ev->users ? outbox_parse_bigint_array(row->user_ids, ev->users, cap) : -1;
        if (n < 0) {
            chorus_set_err(err, errlen, "user_ids is not a bigint list of at most %d",
                           EVENT_MAX_USERS);
            return CHORUS_ERR;
        }
        ev->n_users = (size_t)n;
    }
    if (!is_channel && ev->n_users == 0) {
        chorus_set_err(err, errlen, "user event without users");
        return CHORUS_ERR;
    }
    for (size_t i = 0; i < ev->n_users; i++) {
        if (ev->users[i] < 0 || *nparts == max_parts) {
            chorus_set_err(err, errlen, "bad user id or too many target streams");
            return CHORUS_ERR;
        }
        add_part(parts, nparts, PART(FAMILY_U, (int)(ev->users[i] % partitions)));
    }
    return CHORUS_OK;
}

int outbox_row_encode(const outbox_row *row, int partitions, buf *out, int *stream_parts,
                      size_t max_parts, size_t *nparts, char *err, size_t errlen)
{
    chorus_event ev = {0};
    bool is_channel = false;
    int rc = parse_header(row, &ev, &is_channel, err, errlen);
    if (rc == CHORUS_OK)
        rc = collect_targets(row, is_channel, partitions, &ev, stream_parts, max_parts, nparts,
                             err, errlen);
    if (rc == CHORUS_OK) {
        json_error_t jerr;
        ev.data = json_loads(row->payload, JSON_REJECT_DUPLICATES, &jerr);
        if (!json_is_object(ev.data)) {
            chorus_set_err(err, errlen, "payload is not a JSON object");
            rc = CHORUS_ERR;
        }
    }
    if (rc == CHORUS_OK && event_encode_msgpack(&ev, out) != CHORUS_OK) {
        chorus_set_err(err, errlen, "the event cannot be encoded (size or depth)");
        rc = CHORUS_ERR;
    }
    event_clear(&ev);
    return rc;
}

void outbox_stream_key(int stream_part, char key[OUTBOX_KEY_MAX])
{
    snprintf(key, OUTBOX_KEY_MAX, "chorus:%s:%d", stream_part >= 65536 ? "u" : "ch",
             stream_part % 65536);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int outbox_assign(const char *const *live, int nlive, const char *self, int partitions,
                  int *out)
{
    const char **sorted = malloc((size_t)(nlive > 0 ? nlive : 1) * sizeof *sorted);
    if (!sorted)
        return 0;
    memcpy(sorted, live, (size_t)nlive * sizeof *sorted);
    qsort(sorted, (size_t)nlive, sizeof *sorted, cmp_str);
    int rank = -1;
    for (int i = 0; i < nlive; i++)
        if (strcmp(sorted[i], self) == 0)
            rank = i;
    free(sorted);
    if (rank < 0)
        return 0;
    int n = 0;
    for (int p = rank; p < partitions; p += nlive)
        out[n++] = p;
    return n;
}
