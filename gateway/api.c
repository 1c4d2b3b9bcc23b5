/* api.c - what every REST route shares: its state, the bearer token, the write rate
 * limit, and the mapping of api_* results and Postgres errors to HTTP answers. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "api_internal.h"
#include "chorus/jwt.h"
#include "chorus/log.h"
#include "chorus/password.h"
#include "chorus/status.h"

#define API_RATE_KEYS 100000 /* users (or addresses) tracked by a rate limiter */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

api *api_new(app *a, httpd *h)
{
    const chorus_config *cfg = app_config(a);
    api *x = calloc(1, sizeof *x);
    if (!x)
        return NULL;
    x->app = a;
    x->pg = app_pg(a);
    x->secret = cfg->jwt_secret;
    x->secret_len = strlen(cfg->jwt_secret);
    x->ttl_s = cfg->jwt_ttl_s;
    x->partitions = cfg->partitions;
    snprintf(x->partitions_text, sizeof x->partitions_text, "%d", cfg->partitions);
    x->workers = workpool_new(app_loop(a), "auth", cfg->workers, 1024);
    x->writes = ratelimit_new(cfg->rate_limit_per_s, cfg->rate_limit_burst, API_RATE_KEYS);
    x->anon = ratelimit_new(cfg->rate_limit_per_s, cfg->rate_limit_burst, API_RATE_KEYS);
    x->history = history_cache_new();
    x->fresh = fresh_new(x);
    /* A hash of a random password, made once at start (off the request path). */
    char pw[40];
    snprintf(pw, sizeof pw, "%lx%lx", (unsigned long)random(), (unsigned long)time(NULL));
    const char *failed = !x->workers || !x->writes || !x->anon || !x->history || !x->fresh
                             ? "out of memory"
                         : password_hash(pw, PASSWORD_SCRYPT_LN, x->dummy_hash,
                                         sizeof x->dummy_hash) != CHORUS_OK
                             ? "scrypt failed"
                         : api_register_routes(x, h) != CHORUS_OK ||
                                 api_auth_routes(x, h) != CHORUS_OK ||
                                 api_history_prepare(x) != CHORUS_OK
                             ? "routes could not be registered"
                             : NULL;
    if (failed) {
        log_error("api: %s", failed);
        api_free(x);
        return NULL;
    }
    return x;
}

void api_free(api *x)
{
    if (!x)
        return;
    workpool_free(x->workers);
    ratelimit_free(x->writes);
    ratelimit_free(x->anon);
    history_cache_free(x->history);
    fresh_free(x->fresh);
    free(x->bindings);
    free(x);
}

void api_stop(api *x)
{
    if (x)
        fresh_stop(x->fresh);
}

bool api_authenticate(api *x, http_req *r, int64_t *user)
{
    const char *h = http_req_authorization(r);
    char err[128] = "missing bearer token";
    if (h && strncasecmp(h, "Bearer ", 7) == 0) {
        const char *token = h + 7;
        while (*token == ' ')
            token++;
        if (jwt_verify(x->secret, x->secret_len, token, (int64_t)time(NULL), user, err,
                       sizeof err) == CHORUS_OK)
            return true;
    }
    http_req_add_header(r, "www-authenticate", "Bearer");
    http_respond_error(r, 401, "unauthorized", err);
    return false;
}

bool api_rate_ok(api *x, ratelimit *rl, int64_t key, http_req *r)
{
    (void)x;
    double retry = 0;
    if (ratelimit_take(rl, key, now_s(), &retry))
        return true;
    char v[24];
    snprintf(v, sizeof v, "%d", retry < 1 ? 1 : (int)ceil(retry));
    http_req_add_header(r, "retry-after", v);
    http_respond_error(r, 429, "rate_limited", "too many writes: retry after the given seconds");
    return false;
}

static const char *sqlstate(const PGresult *res)
{
    const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return s ? s : "";
}

bool api_result_is_retry(PGresult *res)
{
    if (!res || PQresultStatus(res) != PGRES_FATAL_ERROR)
        return false;
    const char *st = sqlstate(res);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    /* serialization failure, deadlock, or an api_* function that lost a race with a
     * concurrent identical request and asks to be run again (it then finds the winner) */
    return strcmp(st, "40001") == 0 || strcmp(st, "40P01") == 0 ||
           (strcmp(st, "CH409") == 0 && msg && strcmp(msg, "retry_idempotent") == 0);
}

/* A unique violation the functions did not catch themselves, by constraint. */
static const char *conflict_code(const char *constraint)
{
    static const struct { const char *constraint, *code; } map[] = {
        {"users_email_lower_key", "email_taken"},
        {"workspaces_slug_key", "slug_taken"},
        {"channels_workspace_name_key", "channel_name_taken"},
        {"workspace_members_pkey", "already_member"},
        {"channel_members_pkey", "already_member"},
    };
    for (size_t i = 0; constraint && i < sizeof map / sizeof map[0]; i++)
        if (strcmp(constraint, map[i].constraint) == 0)
            return map[i].code;
    return "conflict";
}

/* "users_name_check" -> "name": the field a check constraint guards. */
static void check_field(const char *constraint, const char *table, char *out, size_t n)
{
    out[0] = '\0';
    if (!constraint || !table)
        return;
    size_t tl = strlen(table), cl = strlen(constraint);
    if (cl > tl + 7 && strncmp(constraint, table, tl) == 0 && constraint[tl] == '_' &&
        strcmp(constraint + cl - 6, "_check") == 0)
        snprintf(out, n, "%.*s", (int)(cl - tl - 7), constraint + tl + 1);
}

static void respond_error(http_req *r, PGresult *res, const char *err)
{
    const char *st = sqlstate(res);
    const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    const char *detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
    if (strncmp(st, "CH", 2) == 0) {
        int status = atoi(st + 2);
        http_respond_error_field(r, status >= 400 && status < 600 ? status : 500,
                                 primary ? primary : "error", detail ? detail : "",
                                 PQresultErrorField(res, PG_DIAG_MESSAGE_HINT));
    } else if (strcmp(st, "23505") == 0) {
        http_respond_error(r, 409, conflict_code(PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME)),
                           detail ? detail : "conflict");
    } else if (strcmp(st, "23514") == 0) {
        char field[64];
        check_field(PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME),
                    PQresultErrorField(res, PG_DIAG_TABLE_NAME), field, sizeof field);
        http_respond_error_field(r, 422, "validation_failed", "a value is out of range", field);
    } else if (strncmp(st, "22", 2) == 0) {
        /* data exceptions: the only client text cast is the body to jsonb */
        http_respond_error(r, 400, "invalid_json", primary ? primary : "invalid input");
    } else if (strncmp(st, "08", 2) == 0 || strncmp(st, "57", 2) == 0 ||
               strncmp(st, "53", 2) == 0) {
        http_req_add_header(r, "retry-after", "1");
        http_respond_error(r, 503, "unavailable", "the database is unavailable");
    } else {
        log_error("api: %s %s: database error %s: %s", http_req_method(r), http_req_path(r), st,
                  err ? err : "?");
        http_respond_error(r, 500, "internal", "internal error (see the server log)");
    }
}

void api_respond_result(http_req *r, PGresult *res, const char *err)
{
    if (!res) {
        http_req_add_header(r, "retry-after", "1");
        http_respond_error(r, 503, "unavailable", err ? err : "the database is unavailable");
        return;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        respond_error(r, res, err);
        return;
    }
    if (PQntuples(res) != 1) {
        log_error("api: %s %s: %d rows from an api function", http_req_method(r),
                  http_req_path(r), PQntuples(res));
        http_respond_error(r, 500, "internal", "internal error (see the server log)");
        return;
    }
    int status = atoi(PQgetvalue(res, 0, 0));
    if (PQgetisnull(res, 0, 1))
        http_respond(r, status, "application/json", "", 0);
    else
        http_respond(r, status, "application/json", PQgetvalue(res, 0, 1),
                     (size_t)PQgetlength(res, 0, 1));
}
