/* test_api_concurrency.c - the per-channel sequence and idempotent sends under
 * concurrency, through the real REST API (docs/REST.md, DESIGN.md "Per-channel sequence").
 *
 * (1) 8 clients (threads, each its own user and a member of the channel) post 1,000
 *     messages each into ONE channel at once. Afterwards: 8,000 message rows with 8,000
 *     distinct seqs; each client's own messages got increasing seqs; every answer's
 *     (id, seq) is the row's; the channel's outbox events hold seqs 1..last_seq exactly
 *     once; exactly one message.created per message, at the message's seq.
 * (2) Idempotency: a client_msg_id posted twice in a row is 201 then 200 with the same
 *     id and seq and one event; 8 concurrent posts of one user with one shared
 *     client_msg_id make one row, one event, one 201 and the same id in all 8 answers;
 *     the same client_msg_id from another user is a new message. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"

static api_server S;
#define P (S.port)
#define DB (S.pg)

enum { CLIENTS = 8, PER_CLIENT = 1000 };

/* ---- helpers ------------------------------------------------------------------------------- */

static json_t *must(int want, const char *method, const char *path, const char *tok,
                    json_t *body)
{
    return api_must(P, want, method, path, tok, body);
}

static void must_drop(int want, const char *method, const char *path, const char *tok,
                      json_t *body)
{
    api_must_drop(P, want, method, path, tok, body);
}

/* A workspace owned by *owner_tok with a public channel; returns the ids. */
static void make_channel(const char *owner_tok, const char *tag, long long *ws, long long *ch)
{
    json_t *w = must(201, "POST", "/workspaces", owner_tok,
                     json_pack("{s:s,s:s}", "name", tag, "slug", tag));
    *ws = api_int(w, "id");
    json_decref(w);
    json_t *c = must(201, "POST", api_p("/workspaces/%lld/channels", *ws), owner_tok,
                     json_pack("{s:s}", "name", tag));
    *ch = api_int(c, "id");
    json_decref(c);
}

static void add_and_join(const char *owner_tok, long long ws, long long ch, long long uid,
                         const char *tok)
{
    must_drop(201, "POST", api_p("/workspaces/%lld/members", ws), owner_tok,
              json_pack("{s:I}", "user_id", (json_int_t)uid));
    must_drop(200, "POST", api_p("/workspaces/%lld/channels/%lld/join", ws, ch), tok, NULL);
}

static long long q_int(const char *sql, long long a)
{
    const char *p[] = {api_p("%lld", a), NULL};
    return api_db_int(DB, sql, p);
}

/* The channel's events hold seqs 1..last_seq exactly once each; returns last_seq. */
static long long assert_gapless(long long ch)
{
    return api_assert_gapless(DB, ch, "concurrency");
}

static int group_setup(void **state)
{
    (void)state;
    api_db_create(&S, "conc");
    api_server_start(&S, (const char *const[]){"CHORUS_LOG_LEVEL=warn", NULL});
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    api_server_stop(&S);
    api_db_drop(&S);
    return 0;
}

/* ---- (1) 8 x 1,000 posts into one channel --------------------------------------------------- */

typedef struct poster {
    int index;
    const char *token;
    const char *path;
    pthread_barrier_t *start;
    long long ids[PER_CLIENT], seqs[PER_CLIENT];
    int statuses[PER_CLIENT];
    int bad; /* answers that were not 201 with an id and a seq */
} poster;

static void *poster_main(void *arg)
{
    poster *p = arg;
    pthread_barrier_wait(p->start);
    for (int i = 0; i < PER_CLIENT; i++) {
        char text[64];
        snprintf(text, sizeof text, "client %d message %d", p->index, i);
        json_t *out = NULL;
        p->statuses[i] = api_call(P, "POST", p->path, p->token,
                                  json_pack("{s:s}", "text", text), &out);
        json_t *id = json_object_get(out, "id"), *seq = json_object_get(out, "seq");
        if (p->statuses[i] == 201 && json_is_integer(id) && json_is_integer(seq)) {
            p->ids[i] = (long long)json_integer_value(id);
            p->seqs[i] = (long long)json_integer_value(seq);
        } else {
            p->bad++;
        }
        if (out)
            json_decref(out);
    }
    return NULL;
}

/* A Postgres bigint[] literal "{1,2,3}" of n values (heap). */
static char *bigint_array(const long long *v, size_t n)
{
    size_t cap = n * 21 + 3, len = 0;
    char *out = malloc(cap);
    out[len++] = '{';
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(out + len, cap - len, "%s%lld", i ? "," : "", v[i]);
    snprintf(out + len, cap - len, "}");
    return out;
}

static void test_eight_clients_one_channel(void **state)
{
    (void)state;
    long long owner_id;
    char *owner = api_new_user(P, "conc-owner", &owner_id);
    long long ws, ch;
    make_channel(owner, "conc-main", &ws, &ch);
    char *tokens[CLIENTS];
    for (int k = 0; k < CLIENTS; k++) {
        long long uid;
        tokens[k] = api_new_user(P, "conc-client", &uid);
        add_and_join(owner, ws, ch, uid, tokens[k]);
    }
    long long seq_before = q_int("SELECT last_seq FROM channels WHERE id = $1", ch);
    char path[128];
    snprintf(path, sizeof path, "/workspaces/%lld/channels/%lld/messages", ws, ch);

    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, CLIENTS);
    poster *posters = calloc(CLIENTS, sizeof *posters);
    pthread_t th[CLIENTS];
    int64_t t0 = test_now_ms();
    for (int k = 0; k < CLIENTS; k++) {
        posters[k] = (poster){.index = k, .token = tokens[k], .path = path, .start = &start};
        assert_int_equal(pthread_create(&th[k], NULL, poster_main, &posters[k]), 0);
    }
    for (int k = 0; k < CLIENTS; k++)
        pthread_join(th[k], NULL);
    pthread_barrier_destroy(&start);
    print_message("%d posts by %d clients in %lld ms\n", CLIENTS * PER_CLIENT, CLIENTS,
                  (long long)(test_now_ms() - t0));

    /* every answer 201; each client's seqs increase */
    for (int k = 0; k < CLIENTS; k++) {
        if (posters[k].bad) {
            int first = 0;
            while (first < PER_CLIENT && posters[k].statuses[first] == 201)
                first++;
            fail_msg("client %d: %d of %d posts were not 201 with id and seq (first: #%d,"
                     " status %d)",
                     k, posters[k].bad, PER_CLIENT, first,
                     first < PER_CLIENT ? posters[k].statuses[first] : 0);
        }
        for (int i = 1; i < PER_CLIENT; i++)
            if (posters[k].seqs[i] <= posters[k].seqs[i - 1])
                fail_msg("client %d: post #%d got seq %lld after seq %lld: one client's"
                         " sequential posts must get increasing seqs",
                         k, i, posters[k].seqs[i], posters[k].seqs[i - 1]);
    }

    /* the rows */
    long long n = q_int("SELECT count(*) FROM messages WHERE channel_id = $1", ch);
    if (n != CLIENTS * PER_CLIENT)
        fail_msg("expected %d messages in the channel, found %lld", CLIENTS * PER_CLIENT, n);
    long long distinct = q_int("SELECT count(DISTINCT seq) FROM messages WHERE channel_id = $1", ch);
    if (distinct != n)
        fail_msg("message seqs must be unique: %lld distinct for %lld messages", distinct, n);
    long long lo = q_int("SELECT min(seq) FROM messages WHERE channel_id = $1", ch);
    if (lo <= seq_before)
        fail_msg("message seqs should start above the seq before the run (%lld), got %lld",
                 seq_before, lo);
    long long texts = q_int("SELECT count(DISTINCT text) FROM messages WHERE channel_id = $1", ch);
    assert_int_equal(texts, n);

    /* the answers are the rows: (id, seq) of every answer matches a message */
    long long *all_ids = malloc(sizeof(long long) * CLIENTS * PER_CLIENT);
    long long *all_seqs = malloc(sizeof(long long) * CLIENTS * PER_CLIENT);
    for (int k = 0; k < CLIENTS; k++) {
        memcpy(all_ids + k * PER_CLIENT, posters[k].ids, sizeof posters[k].ids);
        memcpy(all_seqs + k * PER_CLIENT, posters[k].seqs, sizeof posters[k].seqs);
    }
    char *ids = bigint_array(all_ids, CLIENTS * PER_CLIENT);
    char *seqs = bigint_array(all_seqs, CLIENTS * PER_CLIENT);
    free(all_ids);
    free(all_seqs);
    const char *pp[] = {ids, seqs, api_p("%lld", ch), NULL};
    long long matched = api_db_int(DB,
                                   "SELECT count(*) FROM unnest($1::bigint[], $2::bigint[]) AS r(id, seq)"
                                   " JOIN messages m ON m.id = r.id AND m.seq = r.seq"
                                   " AND m.channel_id = $3::bigint",
                                   pp);
    free(ids);
    free(seqs);
    if (matched != n)
        fail_msg("%lld of %lld answers carry the (id, seq) of their message row", matched, n);

    /* the events */
    long long last = assert_gapless(ch);
    if (last != seq_before + n)
        fail_msg("last_seq should be %lld + %lld = %lld after the run, got %lld", seq_before, n,
                 seq_before + n, last);
    long long created = q_int("SELECT count(*) FROM outbox WHERE stream = 'ch' AND channel_id = $1"
                              " AND event_type = 'message.created'",
                              ch);
    if (created != n)
        fail_msg("expected one message.created event per message (%lld), found %lld", n, created);
    long long joined = q_int("SELECT count(*) FROM messages m JOIN outbox o"
                             " ON o.stream = 'ch' AND o.channel_id = m.channel_id AND o.seq = m.seq"
                             " AND o.event_type = 'message.created' WHERE m.channel_id = $1",
                             ch);
    if (joined != n)
        fail_msg("%lld of %lld messages have their message.created event at their seq", joined, n);
    long long wrong_part = q_int("SELECT count(*) FROM outbox WHERE stream = 'ch' AND channel_id = $1"
                                 " AND partition_key <> channel_id % 256",
                                 ch);
    assert_int_equal(wrong_part, 0);

    free(posters);
    for (int k = 0; k < CLIENTS; k++)
        free(tokens[k]);
    free(owner);
}

/* ---- (2) idempotency ------------------------------------------------------------------------- */

typedef struct sender {
    const char *token, *path, *cmid;
    pthread_barrier_t *start;
    int status;
    long long id, seq;
} sender;

static void *sender_main(void *arg)
{
    sender *s = arg;
    pthread_barrier_wait(s->start);
    json_t *out = NULL;
    s->status = api_call(P, "POST", s->path, s->token,
                         json_pack("{s:s,s:s}", "text", "only once", "client_msg_id", s->cmid),
                         &out);
    json_t *id = json_object_get(out, "id"), *seq = json_object_get(out, "seq");
    s->id = json_is_integer(id) ? (long long)json_integer_value(id) : -1;
    s->seq = json_is_integer(seq) ? (long long)json_integer_value(seq) : -1;
    if (out)
        json_decref(out);
    return NULL;
}

static long long events_at(long long ch, long long seq)
{
    const char *p[] = {api_p("%lld", ch), api_p("%lld", seq), NULL};
    return api_db_int(DB,
                      "SELECT count(*) FROM outbox WHERE stream = 'ch' AND channel_id = $1"
                      " AND seq = $2 AND event_type = 'message.created'",
                      p);
}

static long long rows_with_cmid(long long ch, const char *cmid)
{
    const char *p[] = {api_p("%lld", ch), cmid, NULL};
    return api_db_int(DB, "SELECT count(*) FROM messages WHERE channel_id = $1 AND client_msg_id = $2",
                      p);
}

static void test_idempotent_send(void **state)
{
    (void)state;
    long long owner_id, other_id;
    char *owner = api_new_user(P, "idem-owner", &owner_id);
    char *other = api_new_user(P, "idem-other", &other_id);
    long long ws, ch;
    make_channel(owner, "idem", &ws, &ch);
    add_and_join(owner, ws, ch, other_id, other);
    char path[128];
    snprintf(path, sizeof path, "/workspaces/%lld/channels/%lld/messages", ws, ch);

    /* sequential retry */
    long long outbox_before = q_int("SELECT count(*) FROM outbox WHERE channel_id = $1", ch);
    json_t *a = must(201, "POST", path, owner,
                     json_pack("{s:s,s:s}", "text", "hello", "client_msg_id", "retry-1"));
    json_t *b = must(200, "POST", path, owner,
                     json_pack("{s:s,s:s}", "text", "hello", "client_msg_id", "retry-1"));
    if (api_int(a, "id") != api_int(b, "id") || api_int(a, "seq") != api_int(b, "seq"))
        fail_msg("a repeated client_msg_id must answer the first message (same id and seq)");
    assert_string_equal(api_str(b, "client_msg_id"), "retry-1");
    long long seq1 = api_int(a, "seq"), id1 = api_int(a, "id");
    json_decref(a);
    json_decref(b);
    assert_int_equal(rows_with_cmid(ch, "retry-1"), 1);
    assert_int_equal(events_at(ch, seq1), 1);
    assert_int_equal(q_int("SELECT count(*) FROM outbox WHERE channel_id = $1", ch),
                     outbox_before + 1);

    /* the same key from another user is another message */
    json_t *c = must(201, "POST", path, other,
                     json_pack("{s:s,s:s}", "text", "hello", "client_msg_id", "retry-1"));
    if (api_int(c, "id") == id1 || api_int(c, "seq") == seq1)
        fail_msg("another user's message with the same client_msg_id must be new");
    json_decref(c);

    /* 8 concurrent sends with one key */
    long long last_before = q_int("SELECT last_seq FROM channels WHERE id = $1", ch);
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, CLIENTS);
    sender ss[CLIENTS];
    pthread_t th[CLIENTS];
    for (int k = 0; k < CLIENTS; k++) {
        ss[k] = (sender){.token = owner, .path = path, .cmid = "shared-1", .start = &start};
        assert_int_equal(pthread_create(&th[k], NULL, sender_main, &ss[k]), 0);
    }
    for (int k = 0; k < CLIENTS; k++)
        pthread_join(th[k], NULL);
    pthread_barrier_destroy(&start);
    int n201 = 0, n200 = 0;
    for (int k = 0; k < CLIENTS; k++) {
        if (ss[k].status == 201)
            n201++;
        else if (ss[k].status == 200)
            n200++;
        else
            fail_msg("concurrent send %d with a shared client_msg_id: expected 201 or 200,"
                     " got %d",
                     k, ss[k].status);
        if (ss[k].id != ss[0].id || ss[k].seq != ss[0].seq)
            fail_msg("concurrent sends with a shared client_msg_id: answer %d has id %lld seq"
                     " %lld, answer 0 id %lld seq %lld: all must be the one message",
                     k, ss[k].id, ss[k].seq, ss[0].id, ss[0].seq);
    }
    if (n201 != 1)
        fail_msg("exactly one of 8 concurrent sends should create (201), got %d (and %d x 200)",
                 n201, n200);
    assert_int_equal(rows_with_cmid(ch, "shared-1"), 1);
    assert_int_equal(events_at(ch, ss[0].seq), 1);
    long long last_after = q_int("SELECT last_seq FROM channels WHERE id = $1", ch);
    if (last_after != last_before + 1)
        fail_msg("8 sends of one message should take one seq: last_seq %lld -> %lld",
                 last_before, last_after);
    assert_gapless(ch);

    free(owner);
    free(other);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idempotent_send),
        cmocka_unit_test(test_eight_clients_one_channel),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
