/* api.h - a small blocking JSON client for the REST API tests (docs/REST.md), and the
 * fixture they share: a fresh migrated database, a `chorus run --roles gateway` process
 * on it, a libpq connection to inspect rows, table snapshots, and JWTs crafted
 * independently of lib/jwt.c (OpenSSL HMAC + base64url) to attack the token check.
 *
 * Paths given to api_call are relative to /api/v1 ("/workspaces/3"); api_p builds them
 * printf-style. Everything here is thread-safe except the server fixture functions, so
 * the concurrency test may call api_call from several threads. */
#ifndef CHORUS_TEST_API_H
#define CHORUS_TEST_API_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "testutil.h"

/* The secret every test server signs with: exactly 40 bytes. */
#define API_JWT_SECRET "chorus-api-test-secret-0123456789abcdefg"
#define API_PREFIX "/api/v1"
/* The default number of stream partitions (config key `partitions`). */
#define API_PARTITIONS 256

/* ---- requests ---------------------------------------------------------------------- */

/* A response: the status, the parsed JSON body (NULL when the body is empty or not
 * JSON), and the raw response (headers and body). */
typedef struct api_resp {
    int status;
    json_t *json;
    test_http_resp http;
} api_resp;

/* One request to API_PREFIX path. body is stolen (decref'd) and may be NULL; token may
 * be NULL (no Authorization header). Returns the HTTP status, or -1 when the server
 * could not be reached or answered garbage. *out_json (if out_json is not NULL)
 * receives the parsed body or NULL; the caller decrefs it. */
int api_call(int port, const char *method, const char *path, const char *token,
             json_t *body_or_null, json_t **out_json);

/* The full variant: full_path is used verbatim (include API_PREFIX yourself), body is
 * raw bytes (NULL for none), extra_headers as in test_http ("Name: v\r\n", or NULL)
 * and is sent after the Authorization header the token makes. A body-less request
 * other than GET/HEAD is sent with Content-Length: 0. Requests slower than a second
 * are reported on stderr. Fills out (free with api_resp_free) and returns the status
 * or -1. */
int api_request(int port, const char *method, const char *full_path, const char *token,
                const char *extra_headers, const char *body, size_t body_len,
                api_resp *out);
void api_resp_free(api_resp *r);

/* Sends a body of body_len bytes ('x' repeated, declared application/json) to
 * full_path, stopping early when the server answers before it has read everything
 * (an early 413). Returns the status or -1; out as api_request. */
int api_request_oversized(int port, const char *method, const char *full_path,
                          const char *token, size_t body_len, api_resp *out);

/* printf into one of a few per-thread rotating buffers: valid until 16 more calls in
 * the same thread. For paths: api_p("/workspaces/%lld/channels", ws). */
const char *api_p(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Percent-encodes s for a query value or a path segment (per-thread rotating buffers as
 * api_p). */
const char *api_urlenc(const char *s);

/* ---- JSON access (cmocka assertions with messages naming the key) ------------------ */

/* obj[key] as an integer; fails the test when absent or not an integer. */
long long api_int(const json_t *obj, const char *key);
/* obj[key] as a string; fails the test when absent or not a string. */
const char *api_str(const json_t *obj, const char *key);
/* obj[key] as a boolean; fails the test when absent or not a boolean. */
bool api_bool(const json_t *obj, const char *key);
/* obj[key] must be JSON null. */
void api_assert_null(const json_t *obj, const char *key);
/* obj[key] must be an RFC 3339 UTC time with milliseconds ("2026-11-23T15:19:07.529Z"). */
void api_assert_time(const json_t *obj, const char *key);
/* A list answer {"items":[...],"next_cursor":string|null}: returns items. */
json_t *api_items(const json_t *list);
/* next_cursor of a list answer, or NULL when it is null. */
const char *api_next_cursor(const json_t *list);

/* Asserts an error answer: the status, {"error":{"code":code,"message":<string>}} and,
 * when field is not NULL, error.field == field. what describes the request in the
 * failure message. */
void api_assert_error(const char *what, int status, const json_t *body, int want_status,
                      const char *code, const char *field);

/* ---- users -------------------------------------------------------------------------- */

/* POST /auth/signup; asserts 201 and the {user,token} shape. Returns the token (heap,
 * caller frees) and the user id in *user_id (if not NULL). */
char *api_signup(int port, const char *email, const char *name, const char *password,
                 long long *user_id);
/* A new user with a unique email ("<tag>-<n>@test.chorus.dev"), name tag, password
 * "password-123". */
char *api_new_user(int port, const char *tag, long long *user_id);

/* ---- JWTs crafted by the test ------------------------------------------------------- */

/* base64url without padding (heap). */
char *api_b64url(const void *data, size_t len);
/* "<b64url(header)>.<b64url(payload)>.<b64url(HMAC(alg, secret, first two parts))>";
 * alg is "sha256" or "sha512"; secret NULL gives an empty signature part. Heap. */
char *api_jwt_sign(const char *alg, const char *secret, const char *header_json,
                   const char *payload_json);
/* A correct HS256 token for sub (a string, as the contract says) with iat = now +
 * iat_off_s and exp = now + exp_off_s. Heap. */
char *api_jwt_hs256(const char *secret, const char *sub, long iat_off_s, long exp_off_s);

/* ---- the server fixture ------------------------------------------------------------- */

typedef struct api_server {
    char db_name[64];
    char db_conninfo[512]; /* keyword conninfo for the test's own libpq use */
    char db_url[512];      /* postgresql:// URL handed to chorus */
    char redis_url[160];   /* REDIS_URL's server, a db of the test's own (by its tag) */
    test_proc proc;
    int port;
    PGconn *pg;            /* the test's connection to db_name */
} api_server;

/* Creates database chorus_api_<tag>_<pid> on the server of DATABASE_URL (dropping a
 * leftover), runs migrate_run on it and opens s->pg. Takes a Redis db of its own (1-63,
 * flushed; a counter in db 0 hands them out): tests that run at once share the server,
 * and their ids (users, channels) start from 1 in each database, so their streams and
 * keys must not meet. */
void api_db_create(api_server *s, const char *tag);
/* Gives s another Redis db of its own, emptied (api_db_create takes one already): a
 * second process on the same database that must not see the first one's registry. */
void api_redis_db(api_server *s);
/* Closes s->pg and drops the database (WITH (FORCE)). */
void api_db_drop(api_server *s);

/* Starts `chorus run --roles gateway` on s's database on a free port, with the test
 * JWT secret, REDIS_URL, and extra_env ("KEY=value", NULL-terminated, may be NULL;
 * e.g. the rate limit). Waits for /readyz 200 (fails the test, with the log, if not). */
void api_server_start(api_server *s, const char *const *extra_env);
/* The same with other roles in the process (e.g. "gateway,wss"; the gateway's port is
 * the one waited on). */
void api_server_start_roles(api_server *s, const char *roles, const char *const *extra_env);
/* `chorus run --roles gateway,wss,outbox` (as above) with the WSS listener on a free
 * port and node id node_id (sessions are "<node_id>-<n>"). Returns the WSS port. */
int api_server_start_wss(api_server *s, const char *node_id, const char *const *extra_env);
/* SIGTERM; asserts exit status 0 (dumping the log otherwise); removes the log. */
void api_server_stop(api_server *s);

/* ---- database inspection ------------------------------------------------------------ */

/* Runs sql with text parameters (NULL-terminated array, may be NULL); fails the test on
 * error. */
PGresult *api_db_query(PGconn *c, const char *sql, const char *const *params);

/* One call that must answer want: returns its JSON (the caller decrefs it; may be NULL);
 * otherwise prints the body and fails the test. */
json_t *api_must(int port, int want, const char *method, const char *path, const char *token,
                 json_t *body);
/* The same when the answer's body is not needed. */
void api_must_drop(int port, int want, const char *method, const char *path, const char *token,
                   json_t *body);
/* The channel's events in the outbox hold seqs 1..last_seq exactly once each (what names
 * the step on failure); returns last_seq. */
long long api_assert_gapless(PGconn *db, long long ch, const char *what);
/* The first column of the first row of sql as an integer (NULL counts as 0). */
long long api_db_int(PGconn *c, const char *sql, const char *const *params);
/* A snapshot of every table of the public schema (but schema_migrations): one line per
 * table "name count md5", the md5 over the rows in a stable order. Heap. */
char *api_db_snapshot(PGconn *c);
/* Asserts two snapshots are equal; on a difference prints both and fails with what. */
void api_assert_snapshot_equal(const char *before, const char *after, const char *what);
/* One call (body stolen) that must fail with (status, code, field; field NULL: none)
 * and leave every table of db as it was; what names it on failure. */
void api_assert_refused_unchanged(int port, PGconn *db, const char *what, const char *method,
                                  const char *path, const char *token, json_t *body,
                                  int status, const char *code, const char *field);

#endif
