/* test_api_routes.c - every route of docs/REST.md against a real `chorus run --roles
 * gateway` on a fresh migrated database: success status, body shape and key values;
 * validation (422 naming the field), malformed JSON (400), oversized bodies (413), unknown
 * routes (404) and methods (405), authentication (401, with JWTs crafted here), roles
 * (403) and conflicts (409). The outbox is checked after each write: a successful
 * mutation adds exactly one row with the documented type and stream (channel events with
 * the channel's new last_seq and partition channel_id % 256, user events with their
 * users); a failed request changes no table at all. Also unread counts, history paging,
 * threads, reactions, deletion, and the rate limit of a second, limited process. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api.h"

static api_server S; /* the server of every test in this file */
static api_server R; /* the rate-limited second process (test_rate_limit) */
#define P (S.port)
#define DB (S.pg)

/* ---- small helpers ------------------------------------------------------------------------ */

/* A list of ids for the event checks: USERS(a, b) expands to "array, count". */
#define USERS(...)                                                                        \
    (const long long[]){__VA_ARGS__},                                                     \
        (int)(sizeof((const long long[]){__VA_ARGS__}) / sizeof(long long))

static int uniq(void)
{
    static int n;
    return ++n;
}

/* Calls a route and asserts the status; returns the JSON body (caller decrefs). */
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

/* A request that must fail with (status, code, field) and change no table. */
static void expect_fail(const char *what, const char *method, const char *path,
                        const char *tok, json_t *body, int status, const char *code,
                        const char *field)
{
    api_assert_refused_unchanged(P, DB, what, method, path, tok, body, status, code, field);
}

/* As expect_fail with a raw body (malformed JSON) and a full path. */
static void expect_fail_raw(const char *what, const char *method, const char *full_path,
                            const char *tok, const char *raw, int status, const char *code,
                            const char *field)
{
    char *before = api_db_snapshot(DB);
    api_resp r;
    api_request(P, method, full_path, tok, NULL, raw, raw ? strlen(raw) : 0, &r);
    api_assert_error(what, r.status, r.json, status, code, field);
    api_resp_free(&r);
    char *after = api_db_snapshot(DB);
    api_assert_snapshot_equal(before, after, what);
    free(before);
    free(after);
}

/* Parses a JSON object literal for a request body (fails the test on a typo). */
static json_t *J(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &e);
    if (!j)
        fail_msg("bad JSON literal in the test: %s (%s)", text, e.text);
    return j;
}

/* ---- outbox checks ------------------------------------------------------------------------ */

static long long outbox_mark(void)
{
    return api_db_int(DB, "SELECT coalesce(max(id), 0) FROM outbox", NULL);
}

static long long channel_last_seq(long long ch)
{
    const char *p[] = {api_p("%lld", ch), NULL};
    return api_db_int(DB, "SELECT last_seq FROM channels WHERE id = $1", p);
}

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

/* Parses a Postgres bigint[] text ("{1,2}") into ids (sorted); returns the count. */
static int parse_ids(const char *text, long long *ids, int max)
{
    int n = 0;
    for (const char *p = text; *p && n < max;) {
        while (*p == '{' || *p == ',' || *p == '}')
            p++;
        if (!*p)
            break;
        char *end;
        ids[n++] = strtoll(p, &end, 10);
        p = end;
    }
    qsort(ids, (size_t)n, sizeof *ids, cmp_ll);
    return n;
}

static void assert_same_users(const char *what, const char *got_text, const long long *want,
                              int nwant)
{
    long long got[64], exp[64];
    int ngot = parse_ids(got_text, got, 64);
    memcpy(exp, want, sizeof *want * (size_t)nwant);
    qsort(exp, (size_t)nwant, sizeof *exp, cmp_ll);
    bool same = ngot == nwant;
    for (int i = 0; same && i < ngot; i++)
        same = got[i] == exp[i];
    if (!same) {
        print_error("%s: user_ids %s, expected %d users:", what, got_text, nwant);
        for (int i = 0; i < nwant; i++)
            print_error(" %lld", exp[i]);
        print_error("\n");
        fail_msg("%s: the event's user_ids are not the expected users", what);
    }
}

typedef struct event_row {
    char type[64], stream[8], user_ids[512];
    long long workspace_id, channel_id, seq, partition;
    bool has_channel, has_seq, has_users;
} event_row;

/* The one outbox row written after since; fails unless there is exactly one. */
static event_row one_new_event(long long since, const char *what)
{
    const char *p[] = {api_p("%lld", since), NULL};
    PGresult *r = api_db_query(DB,
                               "SELECT event_type, stream, workspace_id, channel_id, seq,"
                               " partition_key, user_ids::text FROM outbox WHERE id > $1"
                               " ORDER BY id",
                               p);
    if (PQntuples(r) != 1) {
        for (int i = 0; i < PQntuples(r); i++)
            print_error("  new outbox row: %s %s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));
        int n = PQntuples(r);
        PQclear(r);
        fail_msg("%s: expected exactly one new outbox row, found %d", what, n);
    }
    event_row e = {0};
    snprintf(e.type, sizeof e.type, "%s", PQgetvalue(r, 0, 0));
    snprintf(e.stream, sizeof e.stream, "%s", PQgetvalue(r, 0, 1));
    e.workspace_id = atoll(PQgetvalue(r, 0, 2));
    e.has_channel = !PQgetisnull(r, 0, 3);
    e.channel_id = atoll(PQgetvalue(r, 0, 3));
    e.has_seq = !PQgetisnull(r, 0, 4);
    e.seq = atoll(PQgetvalue(r, 0, 4));
    e.partition = atoll(PQgetvalue(r, 0, 5));
    e.has_users = !PQgetisnull(r, 0, 6);
    snprintf(e.user_ids, sizeof e.user_ids, "%s", PQgetvalue(r, 0, 6));
    PQclear(r);
    return e;
}

static void expect_no_event(long long since, const char *what)
{
    const char *p[] = {api_p("%lld", since), NULL};
    long long n = api_db_int(DB, "SELECT count(*) FROM outbox WHERE id > $1", p);
    if (n != 0)
        fail_msg("%s: expected no new outbox row, found %lld", what, n);
}

/* The channel's events hold seqs 1..last_seq exactly once each. */
static void expect_gapless(long long ch, const char *what)
{
    api_assert_gapless(DB, ch, what);
}

/* Exactly one new channel event: type, stream 'ch', the channel and workspace, seq = the
 * channel's new last_seq, partition channel_id % 256; users (if any) its user_ids. */
static void expect_ch_event(long long since, const char *what, const char *type,
                            long long ws, long long ch, const long long *users, int nusers)
{
    event_row e = one_new_event(since, what);
    if (strcmp(e.type, type) != 0)
        fail_msg("%s: expected event_type %s, got %s", what, type, e.type);
    if (strcmp(e.stream, "ch") != 0)
        fail_msg("%s: %s should go to stream 'ch', got '%s'", what, type, e.stream);
    if (e.workspace_id != ws)
        fail_msg("%s: %s workspace_id %lld, expected %lld", what, type, e.workspace_id, ws);
    if (!e.has_channel || e.channel_id != ch)
        fail_msg("%s: %s channel_id should be %lld", what, type, ch);
    long long last = channel_last_seq(ch);
    if (!e.has_seq || e.seq != last)
        fail_msg("%s: %s seq %lld, expected the channel's new last_seq %lld", what, type,
                 e.seq, last);
    if (e.partition != ch % API_PARTITIONS)
        fail_msg("%s: %s partition_key %lld, expected channel_id %% %d = %lld", what, type,
                 e.partition, API_PARTITIONS, ch % API_PARTITIONS);
    if (nusers > 0) {
        if (!e.has_users)
            fail_msg("%s: %s should carry user_ids", what, type);
        assert_same_users(what, e.user_ids, users, nusers);
    }
    expect_gapless(ch, what);
}

/* Exactly one new user event: type, stream 'u', no seq, user_ids = users, partition the
 * one of a listed user (user_id % 256). */
static void expect_u_event(long long since, const char *what, const char *type, long long ws,
                           const long long *users, int nusers)
{
    event_row e = one_new_event(since, what);
    if (strcmp(e.type, type) != 0)
        fail_msg("%s: expected event_type %s, got %s", what, type, e.type);
    if (strcmp(e.stream, "u") != 0)
        fail_msg("%s: %s should go to stream 'u', got '%s'", what, type, e.stream);
    if (e.workspace_id != ws)
        fail_msg("%s: %s workspace_id %lld, expected %lld", what, type, e.workspace_id, ws);
    if (e.has_seq)
        fail_msg("%s: the user event %s should have no seq", what, type);
    if (!e.has_users)
        fail_msg("%s: %s should carry user_ids", what, type);
    assert_same_users(what, e.user_ids, users, nusers);
    bool part_ok = false;
    for (int i = 0; i < nusers; i++)
        part_ok = part_ok || e.partition == users[i] % API_PARTITIONS;
    if (!part_ok)
        fail_msg("%s: %s partition_key %lld is not user_id %% %d of any listed user", what,
                 type, e.partition, API_PARTITIONS);
}

/* ---- shapes --------------------------------------------------------------------------------- */

static void check_user(const json_t *u, long long id, const char *email, const char *name)
{
    if (id)
        assert_int_equal(api_int(u, "id"), id);
    else
        assert_true(api_int(u, "id") > 0);
    assert_string_equal(api_str(u, "email"), email);
    assert_string_equal(api_str(u, "name"), name);
    api_assert_time(u, "created_at");
    if (json_object_get(u, "password_hash") || json_object_get(u, "password"))
        fail_msg("a user object must not carry the password or its hash");
}

static void check_workspace(const json_t *w, const char *name, const char *slug,
                            const char *role)
{
    assert_true(api_int(w, "id") > 0);
    assert_string_equal(api_str(w, "name"), name);
    assert_string_equal(api_str(w, "slug"), slug);
    assert_string_equal(api_str(w, "role"), role);
    api_assert_time(w, "created_at");
}

/* A channel object; unread must be last_seq - last_read_seq for members, 0 otherwise. */
static void check_channel(const json_t *c, long long ws, const char *name, bool priv,
                          bool is_member)
{
    assert_true(api_int(c, "id") > 0);
    assert_int_equal(api_int(c, "workspace_id"), ws);
    assert_string_equal(api_str(c, "name"), name);
    if (!json_object_get(c, "topic"))
        fail_msg("a channel object has \"topic\" (string or null)");
    assert_int_equal(api_bool(c, "private"), priv);
    assert_true(api_int(c, "created_by") > 0);
    api_assert_time(c, "created_at");
    long long last = api_int(c, "last_seq"), read = api_int(c, "last_read_seq"),
              unread = api_int(c, "unread");
    assert_int_equal(api_bool(c, "is_member"), is_member);
    if (is_member && unread != last - read)
        fail_msg("unread %lld should be last_seq %lld - last_read_seq %lld", unread, last, read);
    if (!is_member && unread != 0)
        fail_msg("unread should be 0 for a channel the caller is not in, got %lld", unread);
}

static void check_message(const json_t *m, long long ws, long long ch, long long user,
                          const char *text)
{
    assert_true(api_int(m, "id") > 0);
    assert_int_equal(api_int(m, "workspace_id"), ws);
    assert_int_equal(api_int(m, "channel_id"), ch);
    assert_true(api_int(m, "seq") > 0);
    assert_int_equal(api_int(m, "user_id"), user);
    if (text)
        assert_string_equal(api_str(m, "text"), text);
    if (!json_object_get(m, "client_msg_id") || !json_object_get(m, "parent_id") ||
        !json_object_get(m, "last_reply_at") || !json_object_get(m, "edited_at"))
        fail_msg("a message carries client_msg_id, parent_id, last_reply_at, edited_at");
    assert_true(api_int(m, "reply_count") >= 0);
    api_assert_time(m, "created_at");
    (void)api_bool(m, "deleted");
    if (!json_is_array(json_object_get(m, "reactions")))
        fail_msg("a message carries \"reactions\" as an array");
}

/* ---- world building --------------------------------------------------------------------------- */

static long long mk_workspace(const char *tok, const char *tag)
{
    char slug[64], name[96];
    snprintf(slug, sizeof slug, "%s-%d", tag, uniq());
    snprintf(name, sizeof name, "Workspace %s", slug);
    json_t *w = must(201, "POST", "/workspaces", tok,
                     json_pack("{s:s,s:s}", "name", name, "slug", slug));
    long long id = api_int(w, "id");
    json_decref(w);
    return id;
}

static void add_member(const char *tok, long long ws, long long uid, const char *role)
{
    must_drop(201, "POST", api_p("/workspaces/%lld/members", ws), tok,
              json_pack("{s:I,s:s}", "user_id", (json_int_t)uid, "role", role));
}

static long long mk_channel(const char *tok, long long ws, const char *tag, bool priv)
{
    char name[64];
    snprintf(name, sizeof name, "%s-%d", tag, uniq());
    json_t *c = must(201, "POST", api_p("/workspaces/%lld/channels", ws), tok,
                     json_pack("{s:s,s:b}", "name", name, "private", priv));
    long long id = api_int(c, "id");
    json_decref(c);
    return id;
}

static void join(const char *tok, long long ws, long long ch)
{
    must_drop(200, "POST", api_p("/workspaces/%lld/channels/%lld/join", ws, ch), tok, NULL);
}

/* Posts a message; returns it (caller decrefs). */
static json_t *post(const char *tok, long long ws, long long ch, const char *text)
{
    return must(201, "POST", api_p("/workspaces/%lld/channels/%lld/messages", ws, ch), tok,
                json_pack("{s:s}", "text", text));
}

static long long post_id(const char *tok, long long ws, long long ch, const char *text)
{
    json_t *m = post(tok, ws, ch, text);
    long long id = api_int(m, "id");
    json_decref(m);
    return id;
}

/* The caller's view of channel ch in the channel list of ws (caller decrefs); fails if
 * the list does not show it. */
static json_t *channel_in_list(const char *tok, long long ws, long long ch)
{
    json_t *l = must(200, "GET", api_p("/workspaces/%lld/channels?limit=200", ws), tok, NULL);
    json_t *items = api_items(l), *found = NULL, *it;
    size_t i;
    json_array_foreach(items, i, it) if (api_int(it, "id") == ch) found = json_incref(it);
    json_decref(l);
    if (!found)
        fail_msg("channel %lld is missing from the channel list of workspace %lld", ch, ws);
    return found;
}

static bool list_has_id(const json_t *list, const char *key, long long id)
{
    json_t *it;
    size_t i;
    json_array_foreach(api_items(list), i, it) if (api_int(it, key) == id) return true;
    return false;
}

/* ---- fixture ------------------------------------------------------------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    api_db_create(&S, "routes");
    api_server_start(&S, NULL);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (R.proc.pid > 0) /* test_rate_limit failed before stopping it */
        test_proc_stop(&R.proc, SIGKILL, 5000);
    api_server_stop(&S);
    api_db_drop(&S);
    return 0;
}

/* ---- auth ---------------------------------------------------------------------------------------- */

/* Signup 201 {user,token} and no event; login 200 with the same user; GET /me; wrong
 * credentials 401 invalid_credentials (same for a wrong password and an unknown email);
 * a taken email (any case) 409; every invalid field 422 naming it; nothing written on
 * any failure. */
static void test_signup_login_me(void **state)
{
    (void)state;
    char email[64];
    snprintf(email, sizeof email, "carol-%d@test.chorus.dev", uniq());
    long long mark = outbox_mark();
    json_t *out = must(201, "POST", "/auth/signup", NULL,
                       json_pack("{s:s,s:s,s:s}", "email", email, "name", "Carol", "password",
                                 "correct-horse"));
    const json_t *user = json_object_get(out, "user");
    check_user(user, 0, email, "Carol");
    long long uid = api_int(user, "id");
    char *tok = strdup(api_str(out, "token"));
    assert_true(strlen(tok) > 20);
    json_decref(out);
    expect_no_event(mark, "signup");

    out = must(200, "POST", "/auth/login", NULL,
               json_pack("{s:s,s:s}", "email", email, "password", "correct-horse"));
    check_user(json_object_get(out, "user"), uid, email, "Carol");
    char *tok2 = strdup(api_str(out, "token"));
    json_decref(out);
    expect_no_event(mark, "login");

    for (int i = 0; i < 2; i++) {
        out = must(200, "GET", "/me", i ? tok2 : tok, NULL);
        check_user(out, uid, email, "Carol");
        json_decref(out);
    }

    expect_fail("login with a wrong password", "POST", "/auth/login", NULL,
                json_pack("{s:s,s:s}", "email", email, "password", "wrong-horse"), 401,
                "invalid_credentials", NULL);
    expect_fail("login with an unknown email", "POST", "/auth/login", NULL,
                json_pack("{s:s,s:s}", "email", "nobody@test.chorus.dev", "password",
                          "correct-horse"),
                401, "invalid_credentials", NULL);

    char upper[64];
    snprintf(upper, sizeof upper, "%s", email);
    for (char *c = upper; *c && *c != '@'; c++)
        *c = (char)(*c >= 'a' && *c <= 'z' ? *c - 32 : *c);
    expect_fail("signup with a taken email", "POST", "/auth/signup", NULL,
                json_pack("{s:s,s:s,s:s}", "email", email, "name", "Other", "password",
                          "password-123"),
                409, "email_taken", NULL);
    expect_fail("signup with a taken email in another case", "POST", "/auth/signup", NULL,
                json_pack("{s:s,s:s,s:s}", "email", upper, "name", "Other", "password",
                          "password-123"),
                409, "email_taken", NULL);

    static const struct {
        const char *what, *body, *field;
    } bad[] = {
        {"signup without email", "{\"name\":\"N\",\"password\":\"password-123\"}", "email"},
        {"signup without name", "{\"email\":\"v1@test.chorus.dev\",\"password\":\"password-123\"}", "name"},
        {"signup without password", "{\"email\":\"v2@test.chorus.dev\",\"name\":\"N\"}", "password"},
        {"signup with a numeric email", "{\"email\":42,\"name\":\"N\",\"password\":\"password-123\"}", "email"},
        {"signup with an email without @", "{\"email\":\"no-at-sign\",\"name\":\"N\",\"password\":\"password-123\"}", "email"},
        {"signup with an email with a space", "{\"email\":\"a b@test.chorus.dev\",\"name\":\"N\",\"password\":\"password-123\"}", "email"},
        {"signup with an email with nothing before @", "{\"email\":\"@test.chorus.dev\",\"name\":\"N\",\"password\":\"password-123\"}", "email"},
        {"signup with an email with nothing after @", "{\"email\":\"v3@\",\"name\":\"N\",\"password\":\"password-123\"}", "email"},
        {"signup with two @", "{\"email\":\"a@b@test.chorus.dev\",\"name\":\"N\",\"password\":\"password-123\"}", "email"},
        {"signup with a blank name", "{\"email\":\"v4@test.chorus.dev\",\"name\":\"   \",\"password\":\"password-123\"}", "name"},
        {"signup with a name of the wrong type", "{\"email\":\"v5@test.chorus.dev\",\"name\":[\"N\"],\"password\":\"password-123\"}", "name"},
        {"signup with a control character in the name", "{\"email\":\"v6@test.chorus.dev\",\"name\":\"a\\u0007b\",\"password\":\"password-123\"}", "name"},
        {"signup with a 7-character password", "{\"email\":\"v7@test.chorus.dev\",\"name\":\"N\",\"password\":\"1234567\"}", "password"},
        {"signup with a numeric password", "{\"email\":\"v8@test.chorus.dev\",\"name\":\"N\",\"password\":12345678}", "password"},
        {"login without password", "{\"email\":\"v9@test.chorus.dev\"}", "password"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *path = strncmp(bad[i].what, "login", 5) == 0 ? "/auth/login" : "/auth/signup";
        expect_fail(bad[i].what, "POST", path, NULL, J(bad[i].body), 422, "validation_failed",
                    bad[i].field);
    }
    expect_fail_raw("signup with malformed JSON", "POST", API_PREFIX "/auth/signup", NULL,
                    "{\"email\":", 400, "invalid_json", NULL);
    free(tok);
    free(tok2);
}

/* Every way a token can be wrong is 401 unauthorized, on reads and writes, with no
 * change; a token crafted here the right way is accepted (so the rejections are not an
 * accident of the crafting). */
static void test_token_rejections(void **state)
{
    (void)state;
    long long uid, other;
    char *tok = api_new_user(P, "tok", &uid);
    char *tok_other = api_new_user(P, "tok-other", &other);
    char sub[32], sub_other[32];
    snprintf(sub, sizeof sub, "%lld", uid);
    snprintf(sub_other, sizeof sub_other, "%lld", other);

    /* positive control: our own HS256 token for uid works */
    char *good = api_jwt_hs256(API_JWT_SECRET, sub, -10, 3600);
    json_t *me = must(200, "GET", "/me", good, NULL);
    assert_int_equal(api_int(me, "id"), uid);
    json_decref(me);

    long now = (long)time(NULL);
    char payload[256], payload_other[256];
    snprintf(payload, sizeof payload, "{\"sub\":\"%s\",\"iat\":%ld,\"exp\":%ld}", sub, now - 10,
             now + 3600);
    snprintf(payload_other, sizeof payload_other, "{\"sub\":\"%s\",\"iat\":%ld,\"exp\":%ld}",
             sub_other, now - 10, now + 3600);

    /* tampered: the signature of uid's token on a payload naming the other user */
    char *tampered = strdup(good);
    {
        char *p64 = api_b64url(payload_other, strlen(payload_other));
        char *dot1 = strchr(good, '.'), *dot2 = strrchr(good, '.');
        size_t n = (size_t)(dot1 - good) + 1 + strlen(p64) + strlen(dot2) + 1;
        free(tampered);
        tampered = malloc(n);
        snprintf(tampered, n, "%.*s.%s%s", (int)(dot1 - good), good, p64, dot2);
        free(p64);
    }
    char *alg_none = api_jwt_sign("sha256", NULL, "{\"alg\":\"none\",\"typ\":\"JWT\"}", payload);
    char *hs512 = api_jwt_sign("sha512", API_JWT_SECRET, "{\"alg\":\"HS512\",\"typ\":\"JWT\"}",
                               payload);
    char *expired = api_jwt_hs256(API_JWT_SECRET, sub, -7200, -60);
    char *ghost = api_jwt_hs256(API_JWT_SECRET, "987654321", -10, 3600);
    char *wrong_key = api_jwt_hs256("another-secret-another-secret-0123456789", sub, -10, 3600);
    char *no_sig = strdup(good);
    *(strrchr(no_sig, '.') + 1) = '\0';

    const struct {
        const char *what, *token;
    } bad[] = {
        {"no token", NULL},
        {"token \"abc\"", "abc"},
        {"tampered payload (sub changed)", tampered},
        {"alg none with an empty signature", alg_none},
        {"HS512 header (signed with HS512)", hs512},
        {"expired token", expired},
        {"valid signature, user does not exist", ghost},
        {"signed with another secret", wrong_key},
        {"signature removed", no_sig},
    };
    long long ws = mk_workspace(tok, "tokws");
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char what[160];
        snprintf(what, sizeof what, "GET /me with %s", bad[i].what);
        expect_fail(what, "GET", "/me", bad[i].token, NULL, 401, "unauthorized", NULL);
        snprintf(what, sizeof what, "POST /workspaces with %s", bad[i].what);
        expect_fail(what, "POST", "/workspaces", bad[i].token,
                    json_pack("{s:s,s:s}", "name", "Nope", "slug", api_p("nope-%d", uniq())),
                    401, "unauthorized", NULL);
        snprintf(what, sizeof what, "GET /workspaces/{ws} with %s", bad[i].what);
        expect_fail(what, "GET", api_p("/workspaces/%lld", ws), bad[i].token, NULL, 401,
                    "unauthorized", NULL);
    }
    /* not a Bearer scheme */
    char hdr[1024];
    snprintf(hdr, sizeof hdr, "Authorization: Basic %s\r\n", good);
    api_resp r;
    api_request(P, "GET", API_PREFIX "/me", NULL, hdr, NULL, 0, &r);
    api_assert_error("GET /me with Authorization: Basic <jwt>", r.status, r.json, 401,
                     "unauthorized", NULL);
    api_resp_free(&r);

    free(tok);
    free(tok_other);
    free(good);
    free(tampered);
    free(alg_none);
    free(hs512);
    free(expired);
    free(ghost);
    free(wrong_key);
    free(no_sig);
}

/* ---- workspaces ---------------------------------------------------------------------------------- */

/* Create (owner, workspace.created to the caller), list, get, patch (admin,
 * workspace.updated to the members), delete (owner only, workspace.deleted to the
 * members); slug conflicts and validation; members cannot patch or delete. */
static void test_workspaces(void **state)
{
    (void)state;
    long long owner, admin, member, outsider;
    char *t_owner = api_new_user(P, "ws-owner", &owner);
    char *t_admin = api_new_user(P, "ws-admin", &admin);
    char *t_member = api_new_user(P, "ws-member", &member);
    char *t_out = api_new_user(P, "ws-outsider", &outsider);

    char slug[64];
    snprintf(slug, sizeof slug, "acme-%d", uniq());
    long long mark = outbox_mark();
    json_t *w = must(201, "POST", "/workspaces", t_owner,
                     json_pack("{s:s,s:s}", "name", "Acme", "slug", slug));
    check_workspace(w, "Acme", slug, "owner");
    long long ws = api_int(w, "id");
    json_decref(w);
    expect_u_event(mark, "POST /workspaces", "workspace.created", ws, USERS(owner));

    add_member(t_owner, ws, admin, "admin");
    add_member(t_owner, ws, member, "member");

    json_t *l = must(200, "GET", "/workspaces", t_owner, NULL);
    assert_true(list_has_id(l, "id", ws));
    json_decref(l);
    l = must(200, "GET", "/workspaces", t_member, NULL);
    json_t *it;
    size_t i;
    bool seen = false;
    json_array_foreach(api_items(l), i, it) if (api_int(it, "id") == ws)
    {
        check_workspace(it, "Acme", slug, "member");
        seen = true;
    }
    assert_true(seen);
    json_decref(l);
    l = must(200, "GET", "/workspaces", t_out, NULL);
    if (list_has_id(l, "id", ws))
        fail_msg("GET /workspaces of a non-member lists the workspace");
    json_decref(l);

    w = must(200, "GET", api_p("/workspaces/%lld", ws), t_admin, NULL);
    check_workspace(w, "Acme", slug, "admin");
    json_decref(w);

    mark = outbox_mark();
    w = must(200, "PATCH", api_p("/workspaces/%lld", ws), t_admin,
             json_pack("{s:s}", "name", "Acme Corp"));
    check_workspace(w, "Acme Corp", slug, "admin");
    json_decref(w);
    expect_u_event(mark, "PATCH /workspaces/{ws}", "workspace.updated", ws,
                   USERS(owner, admin, member));

    expect_fail("PATCH workspace by a plain member", "PATCH", api_p("/workspaces/%lld", ws),
                t_member, json_pack("{s:s}", "name", "Mine"), 403, "forbidden", NULL);
    expect_fail("DELETE workspace by a plain member", "DELETE", api_p("/workspaces/%lld", ws),
                t_member, NULL, 403, "forbidden", NULL);
    expect_fail("DELETE workspace by an admin", "DELETE", api_p("/workspaces/%lld", ws),
                t_admin, NULL, 403, "forbidden", NULL);
    expect_fail("GET workspace by a non-member", "GET", api_p("/workspaces/%lld", ws), t_out,
                NULL, 404, "not_found", NULL);
    expect_fail("GET a workspace that does not exist", "GET", "/workspaces/987654321", t_owner,
                NULL, 404, "not_found", NULL);

    expect_fail("POST /workspaces with a taken slug", "POST", "/workspaces", t_out,
                json_pack("{s:s,s:s}", "name", "Other", "slug", slug), 409, "slug_taken", NULL);
    static const struct {
        const char *what, *body, *field;
    } bad[] = {
        {"workspace without name", "{\"slug\":\"ok-slug-1\"}", "name"},
        {"workspace without slug", "{\"name\":\"N\"}", "slug"},
        {"workspace with slug \"Bad Slug\"", "{\"name\":\"N\",\"slug\":\"Bad Slug\"}", "slug"},
        {"workspace with an upper-case slug", "{\"name\":\"N\",\"slug\":\"Upper\"}", "slug"},
        {"workspace with a slug starting with -", "{\"name\":\"N\",\"slug\":\"-dash\"}", "slug"},
        {"workspace with a 64-character slug", "{\"name\":\"N\",\"slug\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}", "slug"},
        {"workspace with a numeric slug", "{\"name\":\"N\",\"slug\":7}", "slug"},
        {"workspace with an empty name", "{\"name\":\"\",\"slug\":\"ok-slug-2\"}", "name"},
        {"workspace with a numeric name", "{\"name\":5,\"slug\":\"ok-slug-3\"}", "name"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++)
        expect_fail(bad[k].what, "POST", "/workspaces", t_owner, J(bad[k].body), 422,
                    "validation_failed", bad[k].field);
    expect_fail("PATCH workspace with a blank name", "PATCH", api_p("/workspaces/%lld", ws),
                t_owner, J("{\"name\":\" \"}"), 422, "validation_failed", "name");
    expect_fail_raw("POST /workspaces with malformed JSON", "POST", API_PREFIX "/workspaces",
                    t_owner, "{\"name\":", 400, "invalid_json", NULL);
    expect_fail_raw("POST /workspaces with a JSON array", "POST", API_PREFIX "/workspaces",
                    t_owner, "[1,2]", 400, "invalid_json", NULL);

    mark = outbox_mark();
    must_drop(204, "DELETE", api_p("/workspaces/%lld", ws), t_owner, NULL);
    expect_u_event(mark, "DELETE /workspaces/{ws}", "workspace.deleted", ws,
                   USERS(owner, admin, member));
    expect_fail("GET a deleted workspace", "GET", api_p("/workspaces/%lld", ws), t_owner, NULL,
                404, "not_found", NULL);
    l = must(200, "GET", "/workspaces", t_owner, NULL);
    if (list_has_id(l, "id", ws))
        fail_msg("a deleted workspace is still listed");
    json_decref(l);

    free(t_owner);
    free(t_admin);
    free(t_member);
    free(t_out);
}

/* Add (admin; owner to add an owner; workspace.joined to the user), list, remove (admin
 * or self; workspace.left to the user); already_member, last_owner, role and type
 * validation, 403 for plain members. */
static void test_workspace_members(void **state)
{
    (void)state;
    long long owner, admin, member, newbie, other;
    char *t_owner = api_new_user(P, "wm-owner", &owner);
    char *t_admin = api_new_user(P, "wm-admin", &admin);
    char *t_member = api_new_user(P, "wm-member", &member);
    char *t_newbie = api_new_user(P, "wm-newbie", &newbie);
    char *t_other = api_new_user(P, "wm-other", &other);
    long long ws = mk_workspace(t_owner, "wm");

    long long mark = outbox_mark();
    json_t *m = must(201, "POST", api_p("/workspaces/%lld/members", ws), t_owner,
                     json_pack("{s:I,s:s}", "user_id", (json_int_t)admin, "role", "admin"));
    assert_int_equal(api_int(m, "user_id"), admin);
    assert_string_equal(api_str(m, "name"), "wm-admin");
    assert_true(strstr(api_str(m, "email"), "@test.chorus.dev") != NULL);
    assert_string_equal(api_str(m, "role"), "admin");
    api_assert_time(m, "joined_at");
    json_decref(m);
    expect_u_event(mark, "POST /workspaces/{ws}/members", "workspace.joined", ws, USERS(admin));

    /* role is optional: member by default */
    mark = outbox_mark();
    m = must(201, "POST", api_p("/workspaces/%lld/members", ws), t_admin,
             json_pack("{s:I}", "user_id", (json_int_t)member));
    assert_string_equal(api_str(m, "role"), "member");
    json_decref(m);
    expect_u_event(mark, "POST members by an admin", "workspace.joined", ws, USERS(member));

    const char *members = api_p("/workspaces/%lld/members", ws);
    char mpath[128];
    snprintf(mpath, sizeof mpath, "%s", members);
    expect_fail("adding an existing member", "POST", mpath, t_owner,
                json_pack("{s:I}", "user_id", (json_int_t)member), 409, "already_member", NULL);
    expect_fail("a plain member adding a user", "POST", mpath, t_member,
                json_pack("{s:I}", "user_id", (json_int_t)newbie), 403, "forbidden", NULL);
    expect_fail("an admin adding an owner", "POST", mpath, t_admin,
                json_pack("{s:I,s:s}", "user_id", (json_int_t)newbie, "role", "owner"), 403,
                "forbidden", NULL);
    expect_fail("a non-member adding themselves", "POST", mpath, t_newbie,
                json_pack("{s:I}", "user_id", (json_int_t)newbie), 404, "not_found", NULL);
    expect_fail("role \"king\"", "POST", mpath, t_owner,
                json_pack("{s:I,s:s}", "user_id", (json_int_t)newbie, "role", "king"), 422,
                "validation_failed", "role");
    expect_fail("user_id as a string", "POST", mpath, t_owner, J("{\"user_id\":\"7\"}"), 422,
                "validation_failed", "user_id");
    expect_fail("user_id 0", "POST", mpath, t_owner, J("{\"user_id\":0}"), 422,
                "validation_failed", "user_id");
    expect_fail("user_id -3", "POST", mpath, t_owner, J("{\"user_id\":-3}"), 422,
                "validation_failed", "user_id");
    expect_fail("user_id missing", "POST", mpath, t_owner, J("{\"role\":\"member\"}"), 422,
                "validation_failed", "user_id");

    /* the owner may add an owner */
    mark = outbox_mark();
    m = must(201, "POST", mpath, t_owner,
             json_pack("{s:I,s:s}", "user_id", (json_int_t)newbie, "role", "owner"));
    assert_string_equal(api_str(m, "role"), "owner");
    json_decref(m);
    expect_u_event(mark, "owner adds an owner", "workspace.joined", ws, USERS(newbie));

    json_t *l = must(200, "GET", mpath, t_member, NULL);
    size_t n = json_array_size(api_items(l));
    assert_int_equal(n, 4);
    assert_true(list_has_id(l, "user_id", owner) && list_has_id(l, "user_id", admin) &&
                list_has_id(l, "user_id", member) && list_has_id(l, "user_id", newbie));
    json_decref(l);
    expect_fail("GET members by a non-member", "GET", mpath, t_other, NULL, 404, "not_found",
                NULL);
    expect_fail("GET members with limit=0", "GET", api_p("%s?limit=0", mpath), t_owner, NULL,
                422, "validation_failed", "limit");

    expect_fail("a plain member removing another", "DELETE",
                api_p("/workspaces/%lld/members/%lld", ws, admin), t_member, NULL, 403,
                "forbidden", NULL);

    /* self removal (the member joined no channel: exactly one event) */
    mark = outbox_mark();
    must_drop(204, "DELETE", api_p("/workspaces/%lld/members/%lld", ws, member), t_member, NULL);
    expect_u_event(mark, "a member leaving", "workspace.left", ws, USERS(member));
    expect_fail("GET workspace after leaving", "GET", api_p("/workspaces/%lld", ws), t_member,
                NULL, 404, "not_found", NULL);

    /* an admin removes the second owner; then the last owner cannot leave */
    mark = outbox_mark();
    must_drop(204, "DELETE", api_p("/workspaces/%lld/members/%lld", ws, newbie), t_owner, NULL);
    expect_u_event(mark, "an owner removing an owner", "workspace.left", ws, USERS(newbie));
    expect_fail("the last owner leaving", "DELETE",
                api_p("/workspaces/%lld/members/%lld", ws, owner), t_owner, NULL, 409,
                "last_owner", NULL);
    expect_fail("removing a user who is not a member", "DELETE",
                api_p("/workspaces/%lld/members/%lld", ws, other), t_owner, NULL, 404,
                "not_found", NULL);

    free(t_owner);
    free(t_admin);
    free(t_member);
    free(t_newbie);
    free(t_other);
}

/* ---- channels ------------------------------------------------------------------------------------ */

/* Create (caller joins; channel.created with seq 1 to the caller), list (public + own
 * private), get, patch (creator or admin; channel.updated), join (member.joined once;
 * again: 200 and no event), channel members add/list/remove (member.joined/member.left
 * with the user), delete (channel.deleted); conflicts, validation and 403s. */
static void test_channels(void **state)
{
    (void)state;
    long long owner, alice, bob, carol;
    char *t_owner = api_new_user(P, "ch-owner", &owner);
    char *t_alice = api_new_user(P, "ch-alice", &alice);
    char *t_bob = api_new_user(P, "ch-bob", &bob);
    char *t_carol = api_new_user(P, "ch-carol", &carol);
    long long ws = mk_workspace(t_owner, "chws");
    add_member(t_owner, ws, alice, "member");
    add_member(t_owner, ws, bob, "member");
    add_member(t_owner, ws, carol, "member");
    char chans[64];
    snprintf(chans, sizeof chans, "/workspaces/%lld/channels", ws);

    char name[64];
    snprintf(name, sizeof name, "general-%d", uniq());
    long long mark = outbox_mark();
    json_t *c = must(201, "POST", chans, t_alice,
                     json_pack("{s:s,s:s}", "name", name, "topic", "all things"));
    check_channel(c, ws, name, false, true);
    assert_string_equal(api_str(c, "topic"), "all things");
    assert_int_equal(api_int(c, "created_by"), alice);
    assert_int_equal(api_int(c, "last_seq"), 1);
    long long ch = api_int(c, "id");
    json_decref(c);
    expect_ch_event(mark, "POST channels", "channel.created", ws, ch, USERS(alice));
    assert_int_equal(channel_last_seq(ch), 1);

    char pname[64];
    snprintf(pname, sizeof pname, "secret-%d", uniq());
    mark = outbox_mark();
    c = must(201, "POST", chans, t_alice, json_pack("{s:s,s:b}", "name", pname, "private", 1));
    check_channel(c, ws, pname, true, true);
    api_assert_null(c, "topic");
    long long priv = api_int(c, "id");
    json_decref(c);
    expect_ch_event(mark, "POST private channel", "channel.created", ws, priv, USERS(alice));

    expect_fail("a taken channel name", "POST", chans, t_bob, json_pack("{s:s}", "name", name),
                409, "channel_name_taken", NULL);
    static const struct {
        const char *what, *body, *field;
    } bad[] = {
        {"channel without name", "{\"private\":false}", "name"},
        {"channel name with upper case", "{\"name\":\"General\"}", "name"},
        {"channel name with a space", "{\"name\":\"two words\"}", "name"},
        {"channel name of 81 characters", "{\"name\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}", "name"},
        {"channel name empty", "{\"name\":\"\"}", "name"},
        {"private not a boolean", "{\"name\":\"okname\",\"private\":\"yes\"}", "private"},
        {"topic not a string", "{\"name\":\"okname\",\"topic\":5}", "topic"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++)
        expect_fail(bad[k].what, "POST", chans, t_bob, J(bad[k].body), 422, "validation_failed",
                    bad[k].field);
    char *long_topic = malloc(1002);
    memset(long_topic, 't', 1001);
    long_topic[1001] = '\0';
    expect_fail("topic of 1001 characters", "POST", chans, t_bob,
                json_pack("{s:s,s:s}", "name", "okname", "topic", long_topic), 422,
                "validation_failed", "topic");
    free(long_topic);
    char *t_out = api_new_user(P, "ch-outsider", NULL);
    expect_fail("POST channels by a non-member of the workspace", "POST", chans, t_out,
                json_pack("{s:s}", "name", "intruder"), 404, "not_found", NULL);
    free(t_out);

    /* lists: bob sees the public channel (not a member) but not the private one */
    json_t *l = must(200, "GET", chans, t_bob, NULL);
    assert_true(list_has_id(l, "id", ch));
    if (list_has_id(l, "id", priv))
        fail_msg("a private channel is listed to a workspace member who is not in it");
    json_decref(l);
    c = channel_in_list(t_bob, ws, ch);
    check_channel(c, ws, name, false, false);
    json_decref(c);
    c = channel_in_list(t_alice, ws, priv);
    check_channel(c, ws, pname, true, true);
    json_decref(c);
    expect_fail("GET channels with limit=201", "GET", api_p("%s?limit=201", chans), t_bob, NULL,
                422, "validation_failed", "limit");

    c = must(200, "GET", api_p("%s/%lld", chans, ch), t_bob, NULL);
    check_channel(c, ws, name, false, false);
    json_decref(c);
    expect_fail("GET a private channel by a non-member", "GET", api_p("%s/%lld", chans, priv),
                t_bob, NULL, 404, "not_found", NULL);

    /* patch */
    mark = outbox_mark();
    c = must(200, "PATCH", api_p("%s/%lld", chans, ch), t_alice,
             json_pack("{s:s}", "topic", "new topic"));
    assert_string_equal(api_str(c, "topic"), "new topic");
    json_decref(c);
    expect_ch_event(mark, "PATCH channel by its creator", "channel.updated", ws, ch, NULL, 0);
    mark = outbox_mark();
    c = must(200, "PATCH", api_p("%s/%lld", chans, ch), t_owner, json_pack("{s:n}", "topic"));
    api_assert_null(c, "topic");
    json_decref(c);
    expect_ch_event(mark, "PATCH channel by the owner", "channel.updated", ws, ch, NULL, 0);
    expect_fail("PATCH channel by a member who did not create it", "PATCH",
                api_p("%s/%lld", chans, ch), t_bob, json_pack("{s:s}", "topic", "mine"), 403,
                "forbidden", NULL);
    expect_fail("PATCH channel with an invalid name", "PATCH", api_p("%s/%lld", chans, ch),
                t_alice, json_pack("{s:s}", "name", "Bad Name"), 422, "validation_failed",
                "name");

    /* join */
    mark = outbox_mark();
    c = must(200, "POST", api_p("%s/%lld/join", chans, ch), t_bob, NULL);
    check_channel(c, ws, name, false, true);
    json_decref(c);
    expect_ch_event(mark, "POST join", "member.joined", ws, ch, USERS(bob));
    mark = outbox_mark();
    must_drop(200, "POST", api_p("%s/%lld/join", chans, ch), t_bob, NULL);
    expect_no_event(mark, "joining a channel one is in");
    expect_fail("joining a private channel", "POST", api_p("%s/%lld/join", chans, priv), t_bob,
                NULL, 404, "not_found", NULL);

    /* channel members */
    mark = outbox_mark();
    json_t *cm = must(201, "POST", api_p("%s/%lld/members", chans, priv), t_alice,
                      json_pack("{s:I}", "user_id", (json_int_t)bob));
    assert_int_equal(api_int(cm, "user_id"), bob);
    assert_string_equal(api_str(cm, "name"), "ch-bob");
    (void)api_str(cm, "email");
    api_assert_time(cm, "joined_at");
    json_decref(cm);
    expect_ch_event(mark, "POST channel members", "member.joined", ws, priv, USERS(bob));
    l = must(200, "GET", api_p("%s/%lld/members", chans, priv), t_bob, NULL);
    assert_int_equal(json_array_size(api_items(l)), 2);
    assert_true(list_has_id(l, "user_id", alice) && list_has_id(l, "user_id", bob));
    json_decref(l);
    expect_fail("adding a channel member who is not in the workspace", "POST",
                api_p("%s/%lld/members", chans, priv), t_alice,
                json_pack("{s:I}", "user_id", (json_int_t)987654321), 404, "not_found", NULL);
    expect_fail("channel member user_id as a string", "POST",
                api_p("%s/%lld/members", chans, priv), t_alice, J("{\"user_id\":\"x\"}"), 422,
                "validation_failed", "user_id");
    expect_fail("a non-member of a public channel adding someone", "POST",
                api_p("%s/%lld/members", chans, ch), t_carol,
                json_pack("{s:I}", "user_id", (json_int_t)carol), 403, "forbidden", NULL);
    expect_fail("a plain member removing another from a channel", "DELETE",
                api_p("%s/%lld/members/%lld", chans, priv, alice), t_bob, NULL, 403,
                "forbidden", NULL);
    mark = outbox_mark();
    must_drop(204, "DELETE", api_p("%s/%lld/members/%lld", chans, priv, bob), t_bob, NULL);
    expect_ch_event(mark, "leaving a channel", "member.left", ws, priv, USERS(bob));
    expect_fail("GET a private channel after leaving it", "GET", api_p("%s/%lld", chans, priv),
                t_bob, NULL, 404, "not_found", NULL);
    mark = outbox_mark();
    must_drop(204, "DELETE", api_p("%s/%lld/members/%lld", chans, ch, bob), t_owner, NULL);
    expect_ch_event(mark, "an admin removing a channel member", "member.left", ws, ch,
                    USERS(bob));

    /* delete */
    expect_fail("DELETE channel by a member who did not create it", "DELETE",
                api_p("%s/%lld", chans, ch), t_bob, NULL, 403, "forbidden", NULL);
    mark = outbox_mark();
    must_drop(204, "DELETE", api_p("%s/%lld", chans, ch), t_alice, NULL);
    expect_ch_event(mark, "DELETE channel", "channel.deleted", ws, ch, NULL, 0);
    expect_fail("GET a deleted channel", "GET", api_p("%s/%lld", chans, ch), t_alice, NULL, 404,
                "not_found", NULL);
    expect_fail("posting into a deleted channel", "POST",
                api_p("%s/%lld/messages", chans, ch), t_alice, json_pack("{s:s}", "text", "hi"),
                404, "not_found", NULL);
    l = must(200, "GET", chans, t_alice, NULL);
    if (list_has_id(l, "id", ch))
        fail_msg("a deleted channel is still listed");
    json_decref(l);
    /* its name is free again */
    c = must(201, "POST", chans, t_alice, json_pack("{s:s}", "name", name));
    json_decref(c);

    free(t_owner);
    free(t_alice);
    free(t_bob);
    free(t_carol);
}

/* ---- messages ------------------------------------------------------------------------------------ */

/* Post (message.created at the channel's new seq), the 40,000 code point limit, every
 * validation error, edit and delete (author or admin), reactions
 * (added once, counted, removed), and the history showing a deleted message. */
static void test_messages(void **state)
{
    (void)state;
    long long owner, alice, bob, dave;
    char *t_owner = api_new_user(P, "msg-owner", &owner);
    char *t_alice = api_new_user(P, "msg-alice", &alice);
    char *t_bob = api_new_user(P, "msg-bob", &bob);
    char *t_dave = api_new_user(P, "msg-dave", &dave);
    long long ws = mk_workspace(t_owner, "msgws");
    add_member(t_owner, ws, alice, "member");
    add_member(t_owner, ws, bob, "member");
    add_member(t_owner, ws, dave, "member");
    long long ch = mk_channel(t_alice, ws, "talk", false);
    join(t_bob, ws, ch);
    join(t_owner, ws, ch);
    char msgs[128];
    snprintf(msgs, sizeof msgs, "/workspaces/%lld/channels/%lld/messages", ws, ch);

    long long mark = outbox_mark();
    json_t *m = must(201, "POST", msgs, t_alice,
                     json_pack("{s:s,s:s}", "text", "hello", "client_msg_id", "c-1"));
    check_message(m, ws, ch, alice, "hello");
    assert_string_equal(api_str(m, "client_msg_id"), "c-1");
    api_assert_null(m, "parent_id");
    api_assert_null(m, "edited_at");
    api_assert_null(m, "last_reply_at");
    assert_int_equal(api_int(m, "reply_count"), 0);
    assert_false(api_bool(m, "deleted"));
    assert_int_equal(json_array_size(json_object_get(m, "reactions")), 0);
    long long mid = api_int(m, "id");
    assert_int_equal(api_int(m, "seq"), channel_last_seq(ch));
    json_decref(m);
    expect_ch_event(mark, "POST message", "message.created", ws, ch, NULL, 0);

    /* the repeated client_msg_id answers 200 with the first message, no event */
    mark = outbox_mark();
    m = must(200, "POST", msgs, t_alice, json_pack("{s:s,s:s}", "text", "hello", "client_msg_id", "c-1"));
    assert_int_equal(api_int(m, "id"), mid);
    json_decref(m);
    expect_no_event(mark, "a repeated client_msg_id");

    /* 40,000 code points (80,000 bytes of "é") is allowed */
    char *big = malloc(80001);
    for (int i = 0; i < 40000; i++)
        memcpy(big + 2 * i, "\xc3\xa9", 2);
    big[80000] = '\0';
    mark = outbox_mark();
    m = post(t_alice, ws, ch, big);
    assert_int_equal(strlen(api_str(m, "text")), 80000);
    json_decref(m);
    expect_ch_event(mark, "POST message of 40,000 code points", "message.created", ws, ch, NULL, 0);
    char *too_big = malloc(40002);
    memset(too_big, 'x', 40001);
    too_big[40001] = '\0';
    expect_fail("text of 40,001 characters", "POST", msgs, t_alice,
                json_pack("{s:s}", "text", too_big), 422, "validation_failed", "text");
    free(big);
    free(too_big);

    static const struct {
        const char *what, *body, *field;
    } bad[] = {
        {"message without text", "{\"client_msg_id\":\"c-x\"}", "text"},
        {"message with empty text", "{\"text\":\"\"}", "text"},
        {"message with numeric text", "{\"text\":42}", "text"},
        {"message with null text", "{\"text\":null}", "text"},
        {"message with empty client_msg_id", "{\"text\":\"hi\",\"client_msg_id\":\"\"}", "client_msg_id"},
        {"message with numeric client_msg_id", "{\"text\":\"hi\",\"client_msg_id\":5}", "client_msg_id"},
        {"message with parent_id as a string", "{\"text\":\"hi\",\"parent_id\":\"1\"}", "parent_id"},
        {"message with parent_id 0", "{\"text\":\"hi\",\"parent_id\":0}", "parent_id"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++)
        expect_fail(bad[k].what, "POST", msgs, t_alice, J(bad[k].body), 422, "validation_failed",
                    bad[k].field);
    char *cmid = malloc(257);
    memset(cmid, 'k', 256);
    cmid[256] = '\0';
    expect_fail("client_msg_id of 256 characters", "POST", msgs, t_alice,
                json_pack("{s:s,s:s}", "text", "hi", "client_msg_id", cmid), 422,
                "validation_failed", "client_msg_id");
    free(cmid);

    expect_fail("posting as a workspace member not in the channel", "POST", msgs, t_dave,
                json_pack("{s:s}", "text", "let me in"), 403, "forbidden", NULL);

    /* edit */
    long long bob_msg = post_id(t_bob, ws, ch, "bob's words");
    mark = outbox_mark();
    m = must(200, "PATCH", api_p("%s/%lld", msgs, mid), t_alice,
             json_pack("{s:s}", "text", "hello, edited"));
    check_message(m, ws, ch, alice, "hello, edited");
    api_assert_time(m, "edited_at");
    json_decref(m);
    expect_ch_event(mark, "PATCH message by its author", "message.updated", ws, ch, NULL, 0);
    expect_fail("editing someone else's message", "PATCH", api_p("%s/%lld", msgs, bob_msg),
                t_alice, json_pack("{s:s}", "text", "mine now"), 403, "forbidden", NULL);
    expect_fail("editing with empty text", "PATCH", api_p("%s/%lld", msgs, mid), t_alice,
                json_pack("{s:s}", "text", ""), 422, "validation_failed", "text");
    expect_fail("editing a message that does not exist", "PATCH",
                api_p("%s/%lld", msgs, 987654321LL), t_alice, json_pack("{s:s}", "text", "x"),
                404, "not_found", NULL);
    mark = outbox_mark();
    m = must(200, "PATCH", api_p("%s/%lld", msgs, bob_msg), t_owner,
             json_pack("{s:s}", "text", "moderated"));
    assert_string_equal(api_str(m, "text"), "moderated");
    json_decref(m);
    expect_ch_event(mark, "PATCH message by an admin", "message.updated", ws, ch, NULL, 0);

    /* reactions */
    const char *rpath = api_p("%s/%lld/reactions/tada", msgs, mid);
    char rp[256];
    snprintf(rp, sizeof rp, "%s", rpath);
    mark = outbox_mark();
    m = must(200, "PUT", rp, t_bob, NULL);
    json_t *rs = json_object_get(m, "reactions");
    assert_int_equal(json_array_size(rs), 1);
    assert_string_equal(api_str(json_array_get(rs, 0), "emoji"), "tada");
    assert_int_equal(api_int(json_array_get(rs, 0), "count"), 1);
    json_t *users = json_object_get(json_array_get(rs, 0), "users");
    assert_int_equal(json_array_size(users), 1);
    assert_int_equal(json_integer_value(json_array_get(users, 0)), bob);
    json_decref(m);
    expect_ch_event(mark, "PUT reaction", "reaction.added", ws, ch, NULL, 0);
    mark = outbox_mark();
    must_drop(200, "PUT", rp, t_bob, NULL);
    expect_no_event(mark, "PUT a reaction already there");
    mark = outbox_mark();
    m = must(200, "PUT", rp, t_alice, NULL);
    assert_int_equal(api_int(json_array_get(json_object_get(m, "reactions"), 0), "count"), 2);
    json_decref(m);
    expect_ch_event(mark, "PUT reaction by a second user", "reaction.added", ws, ch, NULL, 0);
    expect_fail("reacting as a non-member of the channel", "PUT", rp, t_dave, NULL, 403,
                "forbidden", NULL);
    expect_fail("an emoji with a space", "PUT", api_p("%s/%lld/reactions/a%%20b", msgs, mid),
                t_bob, NULL, 422, "validation_failed", "emoji");
    {
        char e101[128];
        memset(e101, 'e', 101);
        e101[101] = '\0';
        expect_fail("an emoji of 101 characters", "PUT",
                    api_p("%s/%lld/reactions/%s", msgs, mid, e101), t_bob, NULL, 422,
                    "validation_failed", "emoji");
    }
    mark = outbox_mark();
    m = must(200, "DELETE", rp, t_bob, NULL);
    rs = json_object_get(m, "reactions");
    assert_int_equal(api_int(json_array_get(rs, 0), "count"), 1);
    json_decref(m);
    expect_ch_event(mark, "DELETE reaction", "reaction.removed", ws, ch, NULL, 0);
    mark = outbox_mark();
    must_drop(200, "DELETE", rp, t_bob, NULL);
    expect_no_event(mark, "DELETE a reaction that is not there");

    /* delete */
    expect_fail("deleting someone else's message", "DELETE", api_p("%s/%lld", msgs, mid), t_bob,
                NULL, 403, "forbidden", NULL);
    mark = outbox_mark();
    must_drop(204, "DELETE", api_p("%s/%lld", msgs, mid), t_alice, NULL);
    expect_ch_event(mark, "DELETE message", "message.deleted", ws, ch, NULL, 0);
    json_t *l = must(200, "GET", msgs, t_bob, NULL);
    json_t *it;
    size_t i;
    bool seen = false;
    json_array_foreach(api_items(l), i, it) if (api_int(it, "id") == mid)
    {
        seen = true;
        assert_true(api_bool(it, "deleted"));
        assert_string_equal(api_str(it, "text"), "");
    }
    if (!seen)
        fail_msg("a deleted message keeps its place in the history");
    json_decref(l);
    mark = outbox_mark();
    must_drop(204, "DELETE", api_p("%s/%lld", msgs, bob_msg), t_owner, NULL);
    expect_ch_event(mark, "DELETE message by an admin", "message.deleted", ws, ch, NULL, 0);

    free(t_owner);
    free(t_alice);
    free(t_bob);
    free(t_dave);
}

/* Malformed bodies on a write route: 400 invalid_json (truncated JSON, a string, an
 * empty body); a body over 1 MiB: 413 body_too_large; nothing written. */
static void test_malformed_and_oversized_bodies(void **state)
{
    (void)state;
    char *t_alice = api_new_user(P, "body", NULL);
    long long ws = mk_workspace(t_alice, "bodyws");
    long long ch = mk_channel(t_alice, ws, "bodies", false);
    char msgs[128];
    snprintf(msgs, sizeof msgs, "/workspaces/%lld/channels/%lld/messages", ws, ch);
    char full[256];
    snprintf(full, sizeof full, API_PREFIX "%s", msgs);
    expect_fail_raw("malformed JSON {\"text\":", "POST", full, t_alice, "{\"text\":", 400,
                    "invalid_json", NULL);
    expect_fail_raw("a JSON string body", "POST", full, t_alice, "\"text\"", 400,
                    "invalid_json", NULL);
    expect_fail_raw("an empty body", "POST", full, t_alice, "", 400, "invalid_json", NULL);
    {
        char *before = api_db_snapshot(DB);
        api_resp r;
        api_request_oversized(P, "POST", full, t_alice, 1024 * 1024 + 1, &r);
        api_assert_error("a body of 1 MiB + 1 byte", r.status, r.json, 413,
                         "body_too_large", NULL);
        api_resp_free(&r);
        char *after = api_db_snapshot(DB);
        api_assert_snapshot_equal(before, after, "a body of 1 MiB + 1 byte");
        free(before);
        free(after);
    }
    free(t_alice);
}

/* Reactions appear in history too; replies: parent_id filter, reply_count. */
static void test_threads_and_reactions_in_history(void **state)
{
    (void)state;
    long long owner, bob;
    char *t_owner = api_new_user(P, "th-owner", &owner);
    char *t_bob = api_new_user(P, "th-bob", &bob);
    long long ws = mk_workspace(t_owner, "thws");
    add_member(t_owner, ws, bob, "member");
    long long ch = mk_channel(t_owner, ws, "threads", false);
    join(t_bob, ws, ch);
    char msgs[128];
    snprintf(msgs, sizeof msgs, "/workspaces/%lld/channels/%lld/messages", ws, ch);

    long long parent = post_id(t_owner, ws, ch, "a thread");
    (void)post_id(t_owner, ws, ch, "not in the thread");
    long long replies[3];
    for (int k = 0; k < 3; k++) {
        long long mark = outbox_mark();
        json_t *m = must(201, "POST", msgs, t_bob,
                         json_pack("{s:s,s:I}", "text", api_p("reply %d", k), "parent_id",
                                   (json_int_t)parent));
        assert_int_equal(api_int(m, "parent_id"), parent);
        replies[k] = api_int(m, "id");
        json_decref(m);
        expect_ch_event(mark, "POST reply", "message.created", ws, ch, NULL, 0);
    }
    must_drop(200, "PUT", api_p("%s/%lld/reactions/%s", msgs, parent, api_urlenc("+1")), t_bob,
              NULL);

    json_t *l = must(200, "GET", api_p("%s?parent_id=%lld", msgs, parent), t_owner, NULL);
    json_t *items = api_items(l);
    assert_int_equal(json_array_size(items), 3);
    for (size_t k = 0; k < 3; k++) {
        json_t *it = json_array_get(items, k);
        assert_int_equal(api_int(it, "id"), replies[k]);
        assert_int_equal(api_int(it, "parent_id"), parent);
    }
    assert_null(api_next_cursor(l));
    json_decref(l);

    l = must(200, "GET", api_p("%s?limit=200", msgs), t_owner, NULL);
    json_t *it;
    size_t i;
    bool seen = false;
    json_array_foreach(api_items(l), i, it) if (api_int(it, "id") == parent)
    {
        seen = true;
        assert_int_equal(api_int(it, "reply_count"), 3);
        api_assert_time(it, "last_reply_at");
        json_t *rs = json_object_get(it, "reactions");
        assert_int_equal(json_array_size(rs), 1);
        assert_string_equal(api_str(json_array_get(rs, 0), "emoji"), "+1");
        assert_int_equal(api_int(json_array_get(rs, 0), "count"), 1);
        assert_int_equal(json_integer_value(json_array_get(
                             json_object_get(json_array_get(rs, 0), "users"), 0)),
                         bob);
    }
    if (!seen)
        fail_msg("the thread parent is missing from the history");
    json_decref(l);

    expect_fail("parent_id=0", "GET", api_p("%s?parent_id=0", msgs), t_owner, NULL, 422,
                "validation_failed", "parent_id");
    free(t_owner);
    free(t_bob);
}

/* Checks one page of history: ascending seq, every seq in (lo, hi], and records it. */
static void check_page(json_t *items, long long *seen_ids, int *nseen, int max)
{
    long long prev = 0;
    json_t *it;
    size_t i;
    json_array_foreach(items, i, it)
    {
        long long seq = api_int(it, "seq");
        if (seq <= prev)
            fail_msg("history page not in ascending seq: %lld after %lld", seq, prev);
        prev = seq;
        if (*nseen >= max)
            fail_msg("history walk returned more than %d messages", max);
        seen_ids[(*nseen)++] = api_int(it, "id");
    }
}

/* 120 messages: the default page is the newest 50 in ascending seq; the cursor walk
 * backwards and the after_seq walk forwards each return all 120 exactly once; limit=200
 * gets all at once; before_seq and after_seq with a limit. */
static void test_history_paging(void **state)
{
    (void)state;
    long long owner;
    char *t = api_new_user(P, "hist", &owner);
    long long ws = mk_workspace(t, "histws");
    long long ch = mk_channel(t, ws, "history", false);
    char msgs[128];
    snprintf(msgs, sizeof msgs, "/workspaces/%lld/channels/%lld/messages", ws, ch);
    enum { N = 120 };
    long long ids[N], seqs[N];
    for (int k = 0; k < N; k++) {
        json_t *m = post(t, ws, ch, api_p("message %d", k));
        ids[k] = api_int(m, "id");
        seqs[k] = api_int(m, "seq");
        if (k > 0 && seqs[k] <= seqs[k - 1])
            fail_msg("sequential posts must get increasing seqs");
        json_decref(m);
    }

    /* default: newest 50, ascending */
    json_t *l = must(200, "GET", msgs, t, NULL);
    json_t *items = api_items(l);
    assert_int_equal(json_array_size(items), 50);
    for (int k = 0; k < 50; k++)
        assert_int_equal(api_int(json_array_get(items, (size_t)k), "id"), ids[N - 50 + k]);
    json_decref(l);

    /* backwards walk with the cursor */
    long long seen[N + 10];
    int nseen = 0, pages = 0;
    char *cursor = NULL;
    long long prev_first = -1;
    for (;;) {
        const char *path = cursor ? api_p("%s?cursor=%s", msgs, api_urlenc(cursor)) : msgs;
        l = must(200, "GET", path, t, NULL);
        items = api_items(l);
        if (json_array_size(items) > 0) {
            long long last_seq = api_int(json_array_get(items, json_array_size(items) - 1), "seq");
            if (prev_first >= 0 && last_seq >= prev_first)
                fail_msg("the backwards walk must return older pages");
            prev_first = api_int(json_array_get(items, 0), "seq");
        }
        check_page(items, seen, &nseen, N);
        free(cursor);
        const char *next = api_next_cursor(l);
        cursor = next ? strdup(next) : NULL;
        json_decref(l);
        if (!cursor || ++pages > 10)
            break;
    }
    free(cursor);
    assert_int_equal(nseen, N);
    qsort(seen, (size_t)nseen, sizeof *seen, cmp_ll);
    long long sorted[N];
    memcpy(sorted, ids, sizeof sorted);
    qsort(sorted, N, sizeof *sorted, cmp_ll);
    for (int k = 0; k < N; k++)
        if (seen[k] != sorted[k])
            fail_msg("the backwards walk must return each of the 120 messages exactly once");

    /* forwards walk from after_seq=0 with limit=50 */
    nseen = 0;
    pages = 0;
    cursor = NULL;
    int sizes[8] = {0};
    for (;;) {
        const char *path = cursor ? api_p("%s?cursor=%s&limit=50", msgs, api_urlenc(cursor))
                                  : api_p("%s?after_seq=0&limit=50", msgs);
        l = must(200, "GET", path, t, NULL);
        items = api_items(l);
        sizes[pages] = (int)json_array_size(items);
        check_page(items, seen, &nseen, N);
        free(cursor);
        const char *next = api_next_cursor(l);
        cursor = next ? strdup(next) : NULL;
        json_decref(l);
        if (!cursor || ++pages >= 7)
            break;
    }
    free(cursor);
    assert_int_equal(nseen, N);
    for (int k = 0; k < N; k++)
        if (seen[k] != ids[k])
            fail_msg("the forward walk must return the 120 messages in order, once each");
    assert_int_equal(sizes[0], 50);
    assert_int_equal(sizes[1], 50);
    assert_int_equal(sizes[2], 20);

    /* limit=200: everything, no next page */
    l = must(200, "GET", api_p("%s?limit=200", msgs), t, NULL);
    assert_int_equal(json_array_size(api_items(l)), N);
    assert_null(api_next_cursor(l));
    json_decref(l);

    /* before_seq: the last 10 below the 100th message */
    l = must(200, "GET", api_p("%s?before_seq=%lld&limit=10", msgs, seqs[99]), t, NULL);
    items = api_items(l);
    assert_int_equal(json_array_size(items), 10);
    for (int k = 0; k < 10; k++)
        assert_int_equal(api_int(json_array_get(items, (size_t)k), "id"), ids[89 + k]);
    json_decref(l);
    /* after_seq: the first 5 above the 10th */
    l = must(200, "GET", api_p("%s?after_seq=%lld&limit=5", msgs, seqs[9]), t, NULL);
    items = api_items(l);
    assert_int_equal(json_array_size(items), 5);
    for (int k = 0; k < 5; k++)
        assert_int_equal(api_int(json_array_get(items, (size_t)k), "id"), ids[10 + k]);
    assert_non_null(api_next_cursor(l));
    json_decref(l);

    /* last: a page that holds exactly the rest has no next page ("null when there is no
     * more"), also when it is full */
    l = must(200, "GET", api_p("%s?after_seq=0&limit=%d", msgs, N), t, NULL);
    assert_int_equal(json_array_size(api_items(l)), N);
    if (api_next_cursor(l))
        fail_msg("after_seq=0&limit=%d returned all %d messages: next_cursor should be null"
                 " (there is no more), got \"%s\"", N, N, api_next_cursor(l));
    json_decref(l);

    free(t);
}

/* List parameters: limit 0, 201 and "abc", a forged cursor, a negative after_seq and
 * after_seq with before_seq are 422 naming the parameter. */
static void test_list_validation(void **state)
{
    (void)state;
    long long owner;
    char *t = api_new_user(P, "listval", &owner);
    long long ws = mk_workspace(t, "lvws");
    long long ch = mk_channel(t, ws, "listval", false);
    json_decref(post(t, ws, ch, "one message"));
    char msgs[128];
    snprintf(msgs, sizeof msgs, "/workspaces/%lld/channels/%lld/messages", ws, ch);
    /* list validation */
    expect_fail("history with limit=0", "GET", api_p("%s?limit=0", msgs), t, NULL, 422,
                "validation_failed", "limit");
    expect_fail("history with limit=201", "GET", api_p("%s?limit=201", msgs), t, NULL, 422,
                "validation_failed", "limit");
    expect_fail("history with limit=abc", "GET", api_p("%s?limit=abc", msgs), t, NULL, 422,
                "validation_failed", "limit");
    expect_fail("history with after_seq=-1", "GET", api_p("%s?after_seq=-1", msgs), t, NULL, 422,
                "validation_failed", "after_seq");
    expect_fail("GET /workspaces with limit=0", "GET", "/workspaces?limit=0", t, NULL, 422,
                "validation_failed", "limit");
    {
        json_t *out = NULL;
        int st = api_call(P, "GET", api_p("%s?after_seq=5&before_seq=50", msgs), t, NULL, &out);
        api_assert_error("after_seq with before_seq", st, out, 422, "validation_failed", NULL);
        const char *f = json_string_value(json_object_get(json_object_get(out, "error"), "field"));
        if (!f || (strcmp(f, "after_seq") != 0 && strcmp(f, "before_seq") != 0))
            fail_msg("after_seq with before_seq: error.field should name after_seq or before_seq");
        json_decref(out);
    }
    /* last: the one most likely to reach the database */
    expect_fail("history with a forged cursor", "GET", api_p("%s?cursor=not-a-cursor", msgs), t,
                NULL, 422, "validation_failed", "cursor");
    free(t);
}

/* ---- read markers ---------------------------------------------------------------------------------- */

/* unread = last_seq - last_read_seq, moving with posts and POST .../read (read.updated to
 * the caller); a marker that does not move forward is 200 without an event; 0 for
 * channels the caller is not in; seq validation. */
static void test_unread_and_read(void **state)
{
    (void)state;
    long long owner, bob, carol;
    char *t_owner = api_new_user(P, "rd-owner", &owner);
    char *t_bob = api_new_user(P, "rd-bob", &bob);
    char *t_carol = api_new_user(P, "rd-carol", &carol);
    long long ws = mk_workspace(t_owner, "rdws");
    add_member(t_owner, ws, bob, "member");
    add_member(t_owner, ws, carol, "member");
    long long ch = mk_channel(t_owner, ws, "news", false);
    join(t_bob, ws, ch);
    char read[128];
    snprintf(read, sizeof read, "/workspaces/%lld/channels/%lld/read", ws, ch);

    /* where a join puts the marker is not specified: start from "read up to now" (an
     * event or none, depending on it) */
    long long L = channel_last_seq(ch);
    json_t *r = must(200, "POST", read, t_bob, json_pack("{s:I}", "seq", (json_int_t)L));
    assert_int_equal(api_int(r, "channel_id"), ch);
    assert_int_equal(api_int(r, "last_read_seq"), L);
    assert_int_equal(api_int(r, "unread"), 0);
    json_decref(r);
    long long mark;

    for (int k = 0; k < 3; k++)
        json_decref(post(t_owner, ws, ch, api_p("news %d", k)));
    json_t *c = channel_in_list(t_bob, ws, ch);
    check_channel(c, ws, api_str(c, "name"), false, true);
    assert_int_equal(api_int(c, "last_seq"), L + 3);
    assert_int_equal(api_int(c, "last_read_seq"), L);
    assert_int_equal(api_int(c, "unread"), 3);
    json_decref(c);
    c = must(200, "GET", api_p("/workspaces/%lld/channels/%lld", ws, ch), t_bob, NULL);
    assert_int_equal(api_int(c, "unread"), 3);
    json_decref(c);
    c = channel_in_list(t_carol, ws, ch);
    assert_false(api_bool(c, "is_member"));
    assert_int_equal(api_int(c, "unread"), 0);
    json_decref(c);

    mark = outbox_mark();
    r = must(200, "POST", read, t_bob, json_pack("{s:I}", "seq", (json_int_t)(L + 2)));
    assert_int_equal(api_int(r, "last_read_seq"), L + 2);
    assert_int_equal(api_int(r, "unread"), 1);
    json_decref(r);
    expect_u_event(mark, "POST read", "read.updated", ws, USERS(bob));
    c = channel_in_list(t_bob, ws, ch);
    assert_int_equal(api_int(c, "unread"), 1);
    json_decref(c);

    mark = outbox_mark();
    r = must(200, "POST", read, t_bob, json_pack("{s:I}", "seq", (json_int_t)(L + 1)));
    assert_int_equal(api_int(r, "last_read_seq"), L + 2);
    json_decref(r);
    expect_no_event(mark, "a read marker moving backwards");
    mark = outbox_mark();
    must_drop(200, "POST", read, t_bob, json_pack("{s:I}", "seq", (json_int_t)(L + 2)));
    expect_no_event(mark, "a read marker not moving");

    mark = outbox_mark();
    r = must(200, "POST", read, t_bob, json_pack("{s:I}", "seq", (json_int_t)(L + 3)));
    assert_int_equal(api_int(r, "unread"), 0);
    json_decref(r);
    expect_u_event(mark, "POST read to the end", "read.updated", ws, USERS(bob));
    c = channel_in_list(t_bob, ws, ch);
    assert_int_equal(api_int(c, "unread"), 0);
    assert_int_equal(api_int(c, "last_read_seq"), L + 3);
    json_decref(c);

    expect_fail("read without seq", "POST", read, t_bob, J("{}"), 422, "validation_failed", "seq");
    expect_fail("read with seq -1", "POST", read, t_bob, J("{\"seq\":-1}"), 422,
                "validation_failed", "seq");
    expect_fail("read with seq as a string", "POST", read, t_bob, J("{\"seq\":\"3\"}"), 422,
                "validation_failed", "seq");
    expect_fail("read by a workspace member not in the channel", "POST", read, t_carol,
                J("{\"seq\":1}"), 403, "forbidden", NULL);
    free(t_owner);
    free(t_bob);
    free(t_carol);
}

/* ---- routing ----------------------------------------------------------------------------------------- */

/* Unknown paths 404 not_found; known paths with another method 405 with Allow; both with
 * the JSON error body and no change. */
static void test_unknown_route_and_method(void **state)
{
    (void)state;
    char *t = api_new_user(P, "route", NULL);
    static const struct {
        const char *method, *path, *allow;
    } wrong[] = {
        {"PUT", API_PREFIX "/workspaces", "POST"},
        {"DELETE", API_PREFIX "/me", "GET"},
        {"GET", API_PREFIX "/auth/signup", "POST"},
        {"PUT", API_PREFIX "/workspaces/1/channels/1/messages", "GET"},
    };
    for (size_t k = 0; k < sizeof wrong / sizeof wrong[0]; k++) {
        char what[160];
        snprintf(what, sizeof what, "%s %s", wrong[k].method, wrong[k].path);
        char *before = api_db_snapshot(DB);
        api_resp r;
        api_request(P, wrong[k].method, wrong[k].path, t, NULL,
                    strcmp(wrong[k].method, "GET") ? "{}" : NULL,
                    strcmp(wrong[k].method, "GET") ? 2 : 0, &r);
        api_assert_error(what, r.status, r.json, 405, "method_not_allowed", NULL);
        char allow[256];
        if (test_http_header(&r.http, "allow", allow, sizeof allow) != 0)
            fail_msg("%s: a 405 carries an Allow header", what);
        if (!strstr(allow, wrong[k].allow))
            fail_msg("%s: Allow \"%s\" should list %s", what, allow, wrong[k].allow);
        api_resp_free(&r);
        char *after = api_db_snapshot(DB);
        api_assert_snapshot_equal(before, after, what);
        free(before);
        free(after);
    }
    /* every response carries X-Request-Id */
    api_resp r;
    api_request(P, "GET", API_PREFIX "/me", t, NULL, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    char rid[128];
    if (test_http_header(&r.http, "x-request-id", rid, sizeof rid) != 0)
        fail_msg("responses carry X-Request-Id");
    api_resp_free(&r);
    expect_fail_raw("GET an unknown path", "GET", API_PREFIX "/no/such/route", t, NULL, 404,
                    "not_found", NULL);
    expect_fail_raw("POST an unknown path", "POST", API_PREFIX "/workspaces/1/nothing", t, "{}",
                    404, "not_found", NULL);
    free(t);
}

/* Not in REST.md, but hit by the suite itself: a write without a body and without
 * Content-Length (curl -X POST, many HTTP libraries) on a Connection: close request is
 * answered AND the connection closed at once (HTTP/1.1: no Content-Length and no
 * Transfer-Encoding on a request means an empty body), not held open until a timeout. */
static void test_bodyless_write_answers_promptly(void **state)
{
    (void)state;
    long long uid;
    char *t = api_new_user(P, "bodyless", &uid);
    long long ws = mk_workspace(t, "blws");
    long long ch = mk_channel(t, ws, "bodyless", false);
    long long mid = post_id(t, ws, ch, "react to me");
    char hdr[1024];
    snprintf(hdr, sizeof hdr, "Authorization: Bearer %s\r\n", t);
    const struct {
        const char *method, *path;
        int status;
    } reqs[] = {
        {"POST", api_p(API_PREFIX "/workspaces/%lld/channels/%lld/join", ws, ch), 200},
        {"PUT", api_p(API_PREFIX "/workspaces/%lld/channels/%lld/messages/%lld/reactions/tada",
                      ws, ch, mid), 200},
        {"DELETE", api_p(API_PREFIX "/workspaces/%lld/channels/%lld/messages/%lld/reactions/tada",
                         ws, ch, mid), 200},
    };
    for (size_t k = 0; k < sizeof reqs / sizeof reqs[0]; k++) {
        test_http_resp r;
        int64_t t0 = test_now_ms();
        int rc = test_http(P, reqs[k].method, reqs[k].path, hdr, NULL, 0, &r);
        int64_t took = test_now_ms() - t0;
        assert_int_equal(rc, 0);
        if (r.status != reqs[k].status)
            fail_msg("%s %s without a body: expected %d, got %d", reqs[k].method, reqs[k].path,
                     reqs[k].status, r.status);
        test_http_free(&r);
        if (took > 2000)
            fail_msg("%s %s without Content-Length: answered, but the Connection: close"
                     " connection stayed open %lld ms (expected well under 2 s)",
                     reqs[k].method, reqs[k].path, (long long)took);
    }
    free(t);
}

/* ---- rate limit -------------------------------------------------------------------------------------- */

/* A second process on the same database with 5 writes/s, burst 5: a burst of writes
 * ends in 429 rate_limited with Retry-After >= 1 (integer seconds) and nothing written
 * for it; reads still pass; after Retry-After a write passes again. */
/* The newest text of the first page of a channel's history. */
static char *newest_text(const char *tok, const char *msgs)
{
    json_t *l = must(200, "GET", msgs, tok, NULL);
    json_t *items = api_items(l);
    char *t = strdup(api_str(json_array_get(items, json_array_size(items) - 1), "text"));
    json_decref(l);
    return t;
}

static long long cache_hits(void)
{
    api_resp r;
    api_request(P, "GET", "/metrics", NULL, NULL, NULL, 0, &r);
    const char *h = strstr(r.http.body, "chorus_history_cache_total{result=\"hit\"} ");
    long long n = h ? atoll(h + strlen("chorus_history_cache_total{result=\"hit\"} ")) : -1;
    api_resp_free(&r);
    return n;
}

/* History pages are served from the gateway's page cache while the channel's last_seq
 * stands still, and never once it moved: each kind of change shows on the next read;
 * and a caller who lost access gets 404 even for a page that is cached. */
static void test_history_cache_is_exact(void **state)
{
    (void)state;
    long long bob = 0;
    char *t_owner = api_new_user(P, "hcown", NULL), *t_bob = api_new_user(P, "hcbob", &bob);
    long long ws = mk_workspace(t_owner, "hc");
    add_member(t_owner, ws, bob, "member");
    long long ch = mk_channel(t_owner, ws, "hc", true);
    must_drop(201, "POST", api_p("/workspaces/%lld/channels/%lld/members", ws, ch),
              t_owner, json_pack("{s:I}", "user_id", (json_int_t)bob));
    long long id = post_id(t_owner, ws, ch, "one");
    char msgs[160], *t;
    snprintf(msgs, sizeof msgs, "/workspaces/%lld/channels/%lld/messages", ws, ch);

    free(newest_text(t_bob, msgs)); /* renders and caches the page */
    long long hits = cache_hits();
    t = newest_text(t_owner, msgs);
    assert_string_equal(t, "one");
    free(t);
    if (cache_hits() != hits + 1)
        fail_msg("the second read of an unchanged page should be a cache hit");

    post_id(t_bob, ws, ch, "two");
    t = newest_text(t_owner, msgs);
    assert_string_equal(t, "two");
    free(t);
    must_drop(200, "PATCH", api_p("%s/%lld", msgs, id), t_owner,
              json_pack("{s:s}", "text", "one, edited"));
    json_t *l = must(200, "GET", api_p("%s?limit=2", msgs), t_bob, NULL);
    assert_string_equal(api_str(json_array_get(api_items(l), 0), "text"), "one, edited");
    json_decref(l);
    must_drop(200, "PUT", api_p("%s/%lld/reactions/tada", msgs, id), t_bob, NULL);
    l = must(200, "GET", api_p("%s?limit=2", msgs), t_owner, NULL);
    assert_int_equal(json_array_size(json_object_get(json_array_get(api_items(l), 0),
                                                     "reactions")), 1);
    json_decref(l);

    /* bob leaves the private channel: the cached page is no longer his to read */
    free(newest_text(t_bob, msgs));
    must_drop(204, "DELETE", api_p("/workspaces/%lld/channels/%lld/members/%lld", ws, ch, bob), t_bob, NULL);
    json_t *out = NULL;
    assert_int_equal(api_call(P, "GET", msgs, t_bob, NULL, &out), 404);
    json_decref(out);
    free(t_owner);
    free(t_bob);
}

/* The gates read these: requests and latency per route pattern and status, and the
 * Postgres pool figures, all in the Prometheus text of /metrics. */
static void test_metrics_per_route(void **state)
{
    (void)state;
    char *t = api_new_user(P, "metrics", NULL);
    api_resp r;
    api_request(P, "GET", API_PREFIX "/me", t, NULL, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    api_resp_free(&r);
    api_request(P, "GET", "/metrics", NULL, NULL, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    static const char *const want[] = {
        "chorus_http_requests_total{route=\"/api/v1/me\",status=\"200\"}",
        "chorus_http_requests_total{route=\"/api/v1/auth/signup\",status=\"201\"}",
        "chorus_http_request_duration_seconds_bucket{route=\"/api/v1/me\",status=\"200\",le=",
        "chorus_http_request_duration_seconds_count{route=\"/api/v1/auth/signup\",status=\"201\"}",
        "chorus_pg_pool_size{pool=\"main\"}",
        "chorus_pg_pool_wait_seconds_bucket{pool=\"main\",le=",
        "chorus_pg_query_seconds_count{pool=\"main\"}",
        "chorus_workpool_jobs_total{pool=\"auth\"}",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(r.http.body, want[i]))
            fail_msg("/metrics lacks %s", want[i]);
    api_resp_free(&r);
    free(t);
}

static void test_rate_limit(void **state)
{
    (void)state;
    long long uid;
    char *t = api_new_user(P, "rl", &uid);
    long long ws = mk_workspace(t, "rlws");
    long long ch = mk_channel(t, ws, "limited", false);
    char full[160];
    snprintf(full, sizeof full, API_PREFIX "/workspaces/%lld/channels/%lld/messages", ws, ch);

    memset(&R, 0, sizeof R);
    snprintf(R.db_url, sizeof R.db_url, "%s", S.db_url);
    const char *env[] = {"CHORUS_RATE_LIMIT_PER_S=5", "CHORUS_RATE_LIMIT_BURST=5", NULL};
    api_server_start(&R, env);

    const char *pch[] = {api_p("%lld", ch), NULL};
    long long before = api_db_int(DB, "SELECT count(*) FROM messages WHERE channel_id = $1", pch);
    int created = 0, limited = 0, retry_after = -1;
    char limited_body[512] = "";
    for (int k = 0; k < 30; k++) {
        char body[64];
        int n = snprintf(body, sizeof body, "{\"text\":\"burst %d\"}", k);
        api_resp r;
        api_request(R.port, "POST", full, t, NULL, body, (size_t)n, &r);
        if (r.status == 201) {
            created++;
        } else if (r.status == 429) {
            if (limited++ == 0) {
                api_assert_error("a write over the rate limit", r.status, r.json, 429,
                                 "rate_limited", NULL);
                char ra[32];
                if (test_http_header(&r.http, "retry-after", ra, sizeof ra) != 0)
                    fail_msg("a 429 carries a Retry-After header");
                char *end;
                long v = strtol(ra, &end, 10);
                if (end == ra || *end || v < 1)
                    fail_msg("Retry-After should be integer seconds >= 1, got \"%s\"", ra);
                retry_after = (int)v;
                snprintf(limited_body, sizeof limited_body, "%s", r.http.body);
            }
        } else {
            print_error("body: %s\n", r.http.body ? r.http.body : "");
            fail_msg("a burst write: expected 201 or 429, got %d", r.status);
        }
        api_resp_free(&r);
    }
    if (created < 5)
        fail_msg("the burst of 5 should pass, only %d writes did", created);
    if (limited == 0)
        fail_msg("30 writes at once with 5/s burst 5: expected some 429, got none");
    long long after = api_db_int(DB, "SELECT count(*) FROM messages WHERE channel_id = $1", pch);
    assert_int_equal(after - before, created);

    /* reads are not limited */
    api_resp r;
    api_request(R.port, "GET", full, t, NULL, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    api_resp_free(&r);

    /* after Retry-After the budget is back */
    sleep((unsigned)retry_after);
    api_request(R.port, "POST", full, t, NULL, "{\"text\":\"later\"}", 16, &r);
    if (r.status != 201)
        fail_msg("a write after Retry-After (%d s) should pass, got %d", retry_after, r.status);
    api_resp_free(&r);

    api_server_stop(&R);
    free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_signup_login_me),
        cmocka_unit_test(test_token_rejections),
        cmocka_unit_test(test_workspaces),
        cmocka_unit_test(test_workspace_members),
        cmocka_unit_test(test_channels),
        cmocka_unit_test(test_messages),
        cmocka_unit_test(test_malformed_and_oversized_bodies),
        cmocka_unit_test(test_threads_and_reactions_in_history),
        cmocka_unit_test(test_history_paging),
        cmocka_unit_test(test_list_validation),
        cmocka_unit_test(test_unread_and_read),
        cmocka_unit_test(test_unknown_route_and_method),
        cmocka_unit_test(test_bodyless_write_answers_promptly),
        cmocka_unit_test(test_metrics_per_route),
        cmocka_unit_test(test_history_cache_is_exact),
        cmocka_unit_test(test_rate_limit),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
