/* test_api_isolation.c - the isolation matrix of DESIGN.md "Isolation" and docs/REST.md
 * (404 not_found: "existence never leaks").
 *
 * Users: A1 owns workspace A, A2 is a member of A but not of A's private channel P, B1
 * owns workspace B (B2 is a member of B). B has a public and a private channel with
 * messages and reactions. Every route that takes {ws} is one row of ROUTES below; each
 * scenario calls every row of its scopes with one caller and one set of ids, and every
 * answer must be 404 not_found (never 403, never 200) with all tables
 * unchanged (row counts and an md5 of their rows). Adding a route = adding a row. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"

static api_server S;
#define P (S.port)
#define DB (S.pg)

/* ---- the matrix ------------------------------------------------------------------------------ */

enum scope {
    SC_WS = 1,  /* needs {ws} only */
    SC_CH = 2,  /* needs {ws} and {ch} */
    SC_MSG = 4, /* needs {ws}, {ch} and {msg} */
};

/* A route with placeholders: {ws} {ch} {msg} the ids under attack, {add} the user the
 * caller tries to add (itself), {del} the user it tries to remove. read_only rows are
 * also called by the legitimate user as a control (must be 200). */
typedef struct route {
    enum scope scope;
    const char *method, *path, *body;
    bool read_only;
} route;

static const route ROUTES[] = {
    {SC_WS, "GET", "/workspaces/{ws}", NULL, true},
    {SC_WS, "PATCH", "/workspaces/{ws}", "{\"name\":\"pwned\"}", false},
    {SC_WS, "DELETE", "/workspaces/{ws}", NULL, false},
    {SC_WS, "POST", "/workspaces/{ws}/members", "{\"user_id\":{add},\"role\":\"owner\"}", false},
    {SC_WS, "GET", "/workspaces/{ws}/members", NULL, true},
    {SC_WS, "DELETE", "/workspaces/{ws}/members/{del}", NULL, false},
    {SC_WS, "POST", "/workspaces/{ws}/channels", "{\"name\":\"pwned\"}", false},
    {SC_WS, "GET", "/workspaces/{ws}/channels", NULL, true},
    {SC_CH, "GET", "/workspaces/{ws}/channels/{ch}", NULL, true},
    {SC_CH, "PATCH", "/workspaces/{ws}/channels/{ch}", "{\"name\":\"pwned\",\"topic\":\"pwned\"}", false},
    {SC_CH, "DELETE", "/workspaces/{ws}/channels/{ch}", NULL, false},
    {SC_CH, "POST", "/workspaces/{ws}/channels/{ch}/members", "{\"user_id\":{add}}", false},
    {SC_CH, "GET", "/workspaces/{ws}/channels/{ch}/members", NULL, true},
    {SC_CH, "DELETE", "/workspaces/{ws}/channels/{ch}/members/{del}", NULL, false},
    {SC_CH, "POST", "/workspaces/{ws}/channels/{ch}/join", NULL, false},
    {SC_CH, "POST", "/workspaces/{ws}/channels/{ch}/messages", "{\"text\":\"pwned\",\"client_msg_id\":\"pwn-1\"}", false},
    {SC_CH, "GET", "/workspaces/{ws}/channels/{ch}/messages", NULL, true},
    {SC_CH, "GET", "/workspaces/{ws}/channels/{ch}/messages?after_seq=0", NULL, true},
    {SC_CH, "GET", "/workspaces/{ws}/channels/{ch}/messages?before_seq=1000", NULL, true},
    {SC_CH, "GET", "/workspaces/{ws}/channels/{ch}/messages?parent_id={msg}", NULL, true},
    {SC_CH, "POST", "/workspaces/{ws}/channels/{ch}/read", "{\"seq\":1}", false},
    {SC_MSG, "PATCH", "/workspaces/{ws}/channels/{ch}/messages/{msg}", "{\"text\":\"pwned\"}", false},
    {SC_MSG, "DELETE", "/workspaces/{ws}/channels/{ch}/messages/{msg}", NULL, false},
    {SC_MSG, "PUT", "/workspaces/{ws}/channels/{ch}/messages/{msg}/reactions/tada", NULL, false},
    {SC_MSG, "PUT", "/workspaces/{ws}/channels/{ch}/messages/{msg}/reactions/pwned", NULL, false},
    {SC_MSG, "DELETE", "/workspaces/{ws}/channels/{ch}/messages/{msg}/reactions/tada", NULL, false},
};

typedef struct ids {
    long long ws, ch, msg, add, del;
} ids;

/* Replaces the placeholders of tpl by the ids. */
static void expand(const char *tpl, const ids *v, char *out, size_t outlen)
{
    size_t o = 0;
    for (const char *p = tpl; *p;) {
        long long val = 0;
        const char *key = NULL;
        static const char *const keys[] = {"{ws}", "{ch}", "{msg}", "{add}", "{del}"};
        const long long vals[] = {v->ws, v->ch, v->msg, v->add, v->del};
        for (size_t k = 0; k < 5; k++)
            if (strncmp(p, keys[k], strlen(keys[k])) == 0) {
                key = keys[k];
                val = vals[k];
            }
        int n = key ? snprintf(out + o, outlen - o, "%lld", val)
                    : snprintf(out + o, outlen - o, "%c", *p);
        if (n < 0 || (size_t)n >= outlen - o)
            fail_msg("expand: %s too long", tpl);
        o += (size_t)n;
        p += key ? strlen(key) : 1;
    }
}

/* Calls every route of the scopes with tok on v: each must be 404 not_found and change
 * no table. */
static void run_matrix(const char *scenario, const char *tok, unsigned scopes, const ids *v)
{
    int ran = 0;
    for (size_t i = 0; i < sizeof ROUTES / sizeof ROUTES[0]; i++) {
        const route *r = &ROUTES[i];
        if (!(r->scope & scopes))
            continue;
        char path[512], body[512], what[800];
        expand(r->path, v, path, sizeof path);
        json_t *jb = NULL;
        if (r->body) {
            expand(r->body, v, body, sizeof body);
            jb = json_loads(body, 0, NULL);
            assert_non_null(jb);
        }
        snprintf(what, sizeof what, "%s: %s %s", scenario, r->method, path);
        api_assert_refused_unchanged(P, DB, what, r->method, path, tok, jb, 404, "not_found",
                                     NULL);
        ran++;
    }
    assert_true(ran > 0);
}

/* The control: the legitimate user gets 200 on the read-only rows with the same ids,
 * so the 404s above are about the caller, not about wrong ids or paths. */
static void run_control(const char *scenario, const char *tok, unsigned scopes, const ids *v)
{
    for (size_t i = 0; i < sizeof ROUTES / sizeof ROUTES[0]; i++) {
        const route *r = &ROUTES[i];
        if (!(r->scope & scopes) || !r->read_only)
            continue;
        char path[512];
        expand(r->path, v, path, sizeof path);
        json_t *out = NULL;
        int st = api_call(P, r->method, path, tok, NULL, &out);
        if (st != 200) {
            char *d = out ? json_dumps(out, JSON_COMPACT) : NULL;
            print_error("body: %s\n", d ? d : "(none)");
            free(d);
            fail_msg("control for %s: GET %s by the legitimate user: expected 200, got %d",
                     scenario, path, st);
        }
        if (out)
            json_decref(out);
    }
}

/* ---- the world -------------------------------------------------------------------------------- */

typedef struct world {
    long long a1, a2, b1, b2;
    char *t_a1, *t_a2, *t_b1, *t_b2;
    long long ws_a, a_pub, a_priv, a_pub_msg, a_priv_msg;
    long long ws_b, b_pub, b_priv, b_pub_msg, b_priv_msg;
} world;

static world W;

static json_t *must(int want, const char *method, const char *path, const char *tok,
                    json_t *body)
{
    return api_must(P, want, method, path, tok, body);
}

static long long must_id(int want, const char *method, const char *path, const char *tok,
                         json_t *body)
{
    json_t *j = must(want, method, path, tok, body);
    long long id = api_int(j, "id");
    json_decref(j);
    return id;
}

static void must_ok(int want, const char *method, const char *path, const char *tok,
                    json_t *body)
{
    api_must_drop(P, want, method, path, tok, body);
}

static long long workspace(const char *tok, const char *slug)
{
    return must_id(201, "POST", "/workspaces", tok,
                   json_pack("{s:s,s:s}", "name", slug, "slug", slug));
}

static long long channel(const char *tok, long long ws, const char *name, bool priv)
{
    return must_id(201, "POST", api_p("/workspaces/%lld/channels", ws), tok,
                   json_pack("{s:s,s:b}", "name", name, "private", priv));
}

static long long message(const char *tok, long long ws, long long ch, const char *text)
{
    return must_id(201, "POST", api_p("/workspaces/%lld/channels/%lld/messages", ws, ch), tok,
                   json_pack("{s:s}", "text", text));
}

static void react(const char *tok, long long ws, long long ch, long long msg, const char *emoji)
{
    must_ok(200, "PUT",
            api_p("/workspaces/%lld/channels/%lld/messages/%lld/reactions/%s", ws, ch, msg, emoji),
            tok, NULL);
}

static void member(const char *tok, long long ws, long long uid)
{
    must_ok(201, "POST", api_p("/workspaces/%lld/members", ws), tok,
            json_pack("{s:I,s:s}", "user_id", (json_int_t)uid, "role", "member"));
}

static void build_world(void)
{
    W.t_a1 = api_new_user(P, "a1", &W.a1);
    W.t_a2 = api_new_user(P, "a2", &W.a2);
    W.t_b1 = api_new_user(P, "b1", &W.b1);
    W.t_b2 = api_new_user(P, "b2", &W.b2);

    W.ws_a = workspace(W.t_a1, "iso-a");
    member(W.t_a1, W.ws_a, W.a2);
    W.a_pub = channel(W.t_a1, W.ws_a, "a-general", false);
    must_ok(200, "POST", api_p("/workspaces/%lld/channels/%lld/join", W.ws_a, W.a_pub), W.t_a2,
            NULL);
    W.a_priv = channel(W.t_a1, W.ws_a, "a-secret", true);
    W.a_pub_msg = message(W.t_a1, W.ws_a, W.a_pub, "hello A");
    W.a_priv_msg = message(W.t_a1, W.ws_a, W.a_priv, "A's secret");
    react(W.t_a1, W.ws_a, W.a_priv, W.a_priv_msg, "tada");
    (void)message(W.t_a1, W.ws_a, W.a_priv, "A's second secret");

    W.ws_b = workspace(W.t_b1, "iso-b");
    member(W.t_b1, W.ws_b, W.b2);
    W.b_pub = channel(W.t_b1, W.ws_b, "b-general", false);
    W.b_priv = channel(W.t_b1, W.ws_b, "b-secret", true);
    must_ok(200, "POST", api_p("/workspaces/%lld/channels/%lld/join", W.ws_b, W.b_pub), W.t_b2,
            NULL);
    must_ok(201, "POST", api_p("/workspaces/%lld/channels/%lld/members", W.ws_b, W.b_priv),
            W.t_b1, json_pack("{s:I}", "user_id", (json_int_t)W.b2));
    W.b_pub_msg = message(W.t_b1, W.ws_b, W.b_pub, "hello B");
    W.b_priv_msg = message(W.t_b1, W.ws_b, W.b_priv, "B's secret");
    (void)message(W.t_b2, W.ws_b, W.b_pub, "B2 says hi");
    react(W.t_b1, W.ws_b, W.b_pub, W.b_pub_msg, "tada");
    react(W.t_b2, W.ws_b, W.b_pub, W.b_pub_msg, "tada");
    react(W.t_b2, W.ws_b, W.b_priv, W.b_priv_msg, "tada");
}

static int group_setup(void **state)
{
    (void)state;
    api_db_create(&S, "iso");
    api_server_start(&S, NULL);
    build_world();
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    api_server_stop(&S);
    api_db_drop(&S);
    free(W.t_a1);
    free(W.t_a2);
    free(W.t_b1);
    free(W.t_b2);
    return 0;
}

/* ---- scenarios ------------------------------------------------------------------------------------ */

/* A1 on every route of workspace B, with B's public channel and its message. */
static void test_other_workspace_public_channel(void **state)
{
    (void)state;
    ids v = {W.ws_b, W.b_pub, W.b_pub_msg, W.a1, W.b2};
    run_control("B1 on B (control)", W.t_b1, SC_WS | SC_CH | SC_MSG, &v);
    run_matrix("A1 on workspace B / public channel", W.t_a1, SC_WS | SC_CH | SC_MSG, &v);
    /* removing the owner or oneself is no different */
    v.del = W.b1;
    run_matrix("A1 removing B1 from B", W.t_a1, SC_WS | SC_CH, &v);
    v.del = W.a1;
    run_matrix("A1 removing itself from B", W.t_a1, SC_WS | SC_CH, &v);
}

/* A1 on B's private channel. */
static void test_other_workspace_private_channel(void **state)
{
    (void)state;
    ids v = {W.ws_b, W.b_priv, W.b_priv_msg, W.a1, W.b2};
    run_control("B1 on B's private channel (control)", W.t_b1, SC_CH | SC_MSG, &v);
    run_matrix("A1 on workspace B / private channel", W.t_a1, SC_CH | SC_MSG, &v);
}

/* A2, a member of A, on A's private channel P it is not in. */
static void test_private_channel_of_own_workspace(void **state)
{
    (void)state;
    ids v = {W.ws_a, W.a_priv, W.a_priv_msg, W.a2, W.a1};
    run_control("A1 on P (control)", W.t_a1, SC_CH | SC_MSG, &v);
    run_matrix("A2 on A's private channel P", W.t_a2, SC_CH | SC_MSG, &v);
    v.del = W.a2;
    run_matrix("A2 removing itself from P", W.t_a2, SC_CH, &v);
}

/* Mixed ids: A's workspace id with B's channels; A's channel with B's message; B's
 * workspace id with A's channel. */
static void test_mixed_ids(void **state)
{
    (void)state;
    ids v = {W.ws_a, W.b_pub, W.b_pub_msg, W.a1, W.b2};
    run_matrix("A1: workspace A, B's public channel", W.t_a1, SC_CH | SC_MSG, &v);
    v = (ids){W.ws_a, W.b_priv, W.b_priv_msg, W.a1, W.b2};
    run_matrix("A1: workspace A, B's private channel", W.t_a1, SC_CH | SC_MSG, &v);
    v = (ids){W.ws_a, W.a_pub, W.b_pub_msg, W.a1, W.b2};
    run_matrix("A1: A's channel, B's message", W.t_a1, SC_MSG, &v);
    v = (ids){W.ws_a, W.a_priv, W.b_priv_msg, W.a1, W.b2};
    run_matrix("A1: A's private channel, B's private message", W.t_a1, SC_MSG, &v);
    v = (ids){W.ws_b, W.a_pub, W.a_pub_msg, W.a1, W.a2};
    run_matrix("A1: workspace B, A's channel", W.t_a1, SC_CH | SC_MSG, &v);
    /* A2 reaching P's message through the public channel it is in */
    v = (ids){W.ws_a, W.a_pub, W.a_priv_msg, W.a2, W.a1};
    run_matrix("A2: A's public channel, P's message", W.t_a2, SC_MSG, &v);
}

static bool list_has(const char *tok, const char *path, long long id)
{
    json_t *l = must(200, "GET", path, tok, NULL);
    json_t *it;
    size_t i;
    bool found = false;
    json_array_foreach(api_items(l), i, it) found = found || api_int(it, "id") == id;
    json_decref(l);
    return found;
}

/* Lists never show what the caller may not see; history of P's thread through A's
 * public channel is empty; ids of B in bodies are refused without a change. */
static void test_lists_and_body_ids(void **state)
{
    (void)state;
    if (list_has(W.t_a1, "/workspaces", W.ws_b))
        fail_msg("GET /workspaces of A1 lists workspace B");
    if (!list_has(W.t_a1, "/workspaces", W.ws_a))
        fail_msg("GET /workspaces of A1 should list workspace A (control)");
    const char *a_chans = api_p("/workspaces/%lld/channels?limit=200", W.ws_a);
    if (list_has(W.t_a2, a_chans, W.a_priv))
        fail_msg("A's channel list shows the private channel P to A2");
    if (!list_has(W.t_a2, a_chans, W.a_pub))
        fail_msg("A's channel list should show the public channel to A2 (control)");
    if (list_has(W.t_a1, a_chans, W.b_pub) || list_has(W.t_a1, a_chans, W.b_priv))
        fail_msg("A's channel list shows a channel of B");

    /* ids of B (or of P) inside request bodies: refused (404 or 422), nothing written */
    const struct {
        const char *what, *tok, *method, *path;
        json_t *body;
    } cases[] = {
        {"A1 replying in A's channel to B's message", W.t_a1, "POST",
         api_p("/workspaces/%lld/channels/%lld/messages", W.ws_a, W.a_pub),
         json_pack("{s:s,s:I}", "text", "re", "parent_id", (json_int_t)W.b_pub_msg)},
        {"A2 replying in A's public channel to P's message", W.t_a2, "POST",
         api_p("/workspaces/%lld/channels/%lld/messages", W.ws_a, W.a_pub),
         json_pack("{s:s,s:I}", "text", "re", "parent_id", (json_int_t)W.a_priv_msg)},
        {"A1 adding B1 (not in A) to A's channel", W.t_a1, "POST",
         api_p("/workspaces/%lld/channels/%lld/members", W.ws_a, W.a_pub),
         json_pack("{s:I}", "user_id", (json_int_t)W.b1)},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *before = api_db_snapshot(DB);
        json_t *out = NULL;
        int st = api_call(P, cases[i].method, cases[i].path, cases[i].tok, cases[i].body, &out);
        if (st != 404 && st != 422) {
            char *d = out ? json_dumps(out, JSON_COMPACT) : NULL;
            print_error("body: %s\n", d ? d : "(none)");
            free(d);
            fail_msg("%s: expected 404 or 422, got %d", cases[i].what, st);
        }
        if (out)
            json_decref(out);
        char *after = api_db_snapshot(DB);
        api_assert_snapshot_equal(before, after, cases[i].what);
        free(before);
        free(after);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_other_workspace_public_channel),
        cmocka_unit_test(test_other_workspace_private_channel),
        cmocka_unit_test(test_private_channel_of_own_workspace),
        cmocka_unit_test(test_mixed_ids),
        cmocka_unit_test(test_lists_and_body_ids),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
