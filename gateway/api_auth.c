/* api_auth.c - signup and login. The password work (scrypt: ~100 ms of CPU and 128 MiB
 * each) runs on the worker threads; the loop only starts it and answers when it is
 * done. Both routes are rate limited per client address, and a login that names no
 * user still verifies a password against a dummy hash, so the answer time does not
 * tell whether an email has an account. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "api.h"
#include "chorus/jwt.h"
#include "chorus/log.h"
#include "chorus/password.h"
#include "chorus/status.h"

#define PASSWORD_MIN 8
#define PASSWORD_MAX 1024

typedef struct auth_job {
    api *x;
    http_req *r;
    char *password;
    char stored[256]; /* the hash: made (signup) or to check (login) */
    bool ok;          /* login: the password matched */
    int64_t user_id;
    char *user_body;  /* login: {"user":...} from the lookup */
} auth_job;

static void job_free(auth_job *j)
{
    if (j->password) {
        OPENSSL_cleanse(j->password, strlen(j->password));
        free(j->password);
    }
    free(j->user_body);
    free(j);
}

/* FNV-1a of the client address: the key of the per-address limiter. */
static int64_t address_key(const char *addr)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *addr; addr++)
        h = (h ^ (unsigned char)*addr) * 1099511628211ULL;
    return (int64_t)(h >> 1);
}

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* Parses the body and takes its password: answers 400/422 itself when it cannot. */
static auth_job *job_from_body(api *x, http_req *r, bool check_length)
{
    size_t len = 0;
    const char *body = http_req_body(r, &len);
    json_error_t e;
    json_t *j = body && len ? json_loadb(body, len, 0, &e) : NULL;
    if (!j || !json_is_object(j)) {
        json_decref(j);
        http_respond_error(r, 400, "invalid_json", "the body must be a JSON object");
        return NULL;
    }
    const char *pw = json_string_value(json_object_get(j, "password"));
    const char *why = !json_object_get(j, "password") ? "password: is required"
                      : !pw                            ? "password: must be a string"
                                                       : NULL;
    if (!why && check_length && utf8_chars(pw) < PASSWORD_MIN)
        why = "password: must have at least 8 characters";
    if (!why && utf8_chars(pw) > PASSWORD_MAX)
        why = "password: must have at most 1024 characters";
    if (why) {
        json_decref(j);
        http_respond_error_field(r, 422, "validation_failed", why, "password");
        return NULL;
    }
    auth_job *job = calloc(1, sizeof *job);
    if (job)
        job->password = strdup(pw);
    json_decref(j);
    if (!job || !job->password) {
        if (job)
            job_free(job);
        http_respond_error(r, 500, "internal", "out of memory");
        return NULL;
    }
    job->x = x;
    job->r = r;
    return job;
}

/* Answers {user, token} from the {"user":{...}} body a function returned. */
static void respond_with_token(auth_job *job, int status, const char *user_body)
{
    json_t *j = json_loads(user_body, 0, NULL);
    json_int_t id = json_integer_value(json_object_get(json_object_get(j, "user"), "id"));
    char token[1024];
    int64_t now = (int64_t)time(NULL);
    if (!j || id <= 0 ||
        jwt_sign(job->x->secret, job->x->secret_len, id, now, now + job->x->ttl_s, token,
                 sizeof token) != CHORUS_OK) {
        json_decref(j);
        http_respond_error(job->r, 500, "internal", "could not issue a token");
        return;
    }
    json_object_set_new(j, "token", json_string(token));
    http_respond_json(job->r, status, j);
}

static bool job_submit(auth_job *job, void (*work)(void *), void (*done)(void *, bool))
{
    if (workpool_submit(job->x->workers, work, done, job) == CHORUS_OK)
        return true;
    http_req_add_header(job->r, "retry-after", "1");
    http_respond_error(job->r, 503, "unavailable", "too many logins and signups at once");
    job_free(job);
    return false;
}

/* ---- signup ---------------------------------------------------------------------- */

static void signup_created(void *arg, PGresult *res, const char *err)
{
    auth_job *job = arg;
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
        !PQgetisnull(res, 0, 1))
        respond_with_token(job, atoi(PQgetvalue(res, 0, 0)), PQgetvalue(res, 0, 1));
    else
        api_respond_result(job->r, res, err);
    job_free(job);
}

static void signup_hash(void *arg)
{
    auth_job *job = arg;
    job->ok = password_hash(job->password, PASSWORD_SCRYPT_LN, job->stored,
                            sizeof job->stored) == CHORUS_OK;
}

static void signup_hashed(void *arg, bool cancelled)
{
    auth_job *job = arg;
    if (cancelled || !job->ok) {
        http_respond_error(job->r, cancelled ? 503 : 500, cancelled ? "unavailable" : "internal",
                           "the password could not be hashed");
        job_free(job);
        return;
    }
    size_t len = 0;
    const char *params[] = {http_req_body(job->r, &len), job->stored};
    int rc = pgpool_query(job->x->pg, "api_signup", 2, params, signup_created, job);
    if (rc != CHORUS_OK) {
        api_respond_result(job->r, NULL, "the database is unavailable");
        job_free(job);
    }
}

static void post_signup(http_req *r, void *arg)
{
    api *x = arg;
    if (!api_rate_ok(x, x->anon, address_key(http_req_peer(r)), r))
        return;
    auth_job *job = job_from_body(x, r, true);
    if (job)
        job_submit(job, signup_hash, signup_hashed);
}

/* ---- login ----------------------------------------------------------------------- */

static void login_verify(void *arg)
{
    auth_job *job = arg;
    job->ok = password_verify(job->password, job->stored);
}

static void login_verified(void *arg, bool cancelled)
{
    auth_job *job = arg;
    if (cancelled)
        http_respond_error(job->r, 503, "unavailable", "the password could not be checked");
    else if (job->ok && job->user_body)
        respond_with_token(job, 200, job->user_body);
    else
        http_respond_error(job->r, 401, "invalid_credentials", "wrong email or password");
    job_free(job);
}

static void login_looked_up(void *arg, PGresult *res, const char *err)
{
    auth_job *job = arg;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        api_respond_result(job->r, res, err);
        job_free(job);
        return;
    }
    /* No such user: check against the dummy hash all the same (same time, then 401). */
    const char *stored = job->x->dummy_hash;
    if (PQntuples(res) == 1) {
        stored = PQgetvalue(res, 0, 1);
        job->user_body = strdup(PQgetvalue(res, 0, 2));
    }
    snprintf(job->stored, sizeof job->stored, "%s", stored);
    job_submit(job, login_verify, login_verified);
}

static void post_login(http_req *r, void *arg)
{
    api *x = arg;
    if (!api_rate_ok(x, x->anon, address_key(http_req_peer(r)), r))
        return;
    auth_job *job = job_from_body(x, r, false);
    if (!job)
        return;
    size_t len = 0;
    const char *params[] = {http_req_body(r, &len)};
    if (pgpool_query(x->pg, "api_login_lookup", 1, params, login_looked_up, job) != CHORUS_OK) {
        api_respond_result(r, NULL, "the database is unavailable");
        job_free(job);
    }
}

int api_auth_routes(api *x, httpd *h)
{
    if (pgpool_prepare(x->pg, "api_signup",
                       "SELECT status, body::text FROM api_signup($1::jsonb, $2::text)") ||
        pgpool_prepare(x->pg, "api_login_lookup",
                       "SELECT user_id, password_hash, body::text"
                       " FROM api_login_lookup($1::jsonb)") ||
        httpd_route(h, "POST", API_PREFIX "/auth/signup", post_signup, x) ||
        httpd_route(h, "POST", API_PREFIX "/auth/login", post_login, x))
        return CHORUS_ERR;
    return CHORUS_OK;
}
