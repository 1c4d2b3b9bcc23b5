/* api.c - see api.h. */
#include "api.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <regex.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <hiredis/hiredis.h>

#include "chorus/rclient.h"
#include "chorus/migrate.h"

_Static_assert(sizeof API_JWT_SECRET - 1 == 40, "the test JWT secret is 40 bytes");

/* ---- rotating buffers ----------------------------------------------------------------- */

/* Requests slower than this are reported on stderr. */
#define API_SLOW_MS 2000

#define ROT_N 16
#define ROT_LEN 2048

static char *rot_buf(void)
{
    static _Thread_local char bufs[ROT_N][ROT_LEN];
    static _Thread_local int next;
    char *b = bufs[next];
    next = (next + 1) % ROT_N;
    return b;
}

const char *api_p(const char *fmt, ...)
{
    char *b = rot_buf();
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b, ROT_LEN, fmt, ap);
    va_end(ap);
    if (n < 0 || n >= ROT_LEN)
        fail_msg("api_p: path longer than %d bytes", ROT_LEN - 1);
    return b;
}

const char *api_urlenc(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    char *b = rot_buf();
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (o + 4 >= ROT_LEN)
            fail_msg("api_urlenc: value too long");
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '_' || *p == '.' || *p == '~') {
            b[o++] = (char)*p;
        } else {
            b[o++] = '%';
            b[o++] = hex[*p >> 4];
            b[o++] = hex[*p & 15];
        }
    }
    b[o] = '\0';
    return b;
}

/* ---- requests --------------------------------------------------------------------------- */

static void auth_header(char *out, size_t outlen, const char *token, const char *extra)
{
    int n = 0;
    out[0] = '\0';
    if (token)
        n = snprintf(out, outlen, "Authorization: Bearer %s\r\n", token);
    if (extra && n >= 0 && (size_t)n < outlen)
        snprintf(out + n, outlen - (size_t)n, "%s", extra);
}

static void parse_json(api_resp *out)
{
    out->json = NULL;
    if (out->http.body && out->http.body_len > 0)
        out->json = json_loadb(out->http.body, out->http.body_len, JSON_DECODE_ANY, NULL);
}

int api_request(int port, const char *method, const char *full_path, const char *token,
                const char *extra_headers, const char *body, size_t body_len,
                api_resp *out)
{
    char hdr[2048];
    memset(out, 0, sizeof *out);
    auth_header(hdr, sizeof hdr, token, extra_headers);
    /* A write without a body still says Content-Length: 0 (as browsers and most clients
     * do); test_api_routes checks the bare form separately. */
    if (!body && strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        body = "";
    int64_t t0 = test_now_ms();
    int rc = test_http(port, method, full_path, hdr[0] ? hdr : NULL, body, body_len, &out->http);
    int64_t took = test_now_ms() - t0;
    if (took > API_SLOW_MS) /* a diagnostic, not a failure: the status is checked by the caller */
        fprintf(stderr, "api: slow request: %s %s took %lld ms (status %d)\n", method,
                full_path, (long long)took, rc == 0 ? out->http.status : -1);
    if (rc != 0) {
        out->status = -1;
        return -1;
    }
    out->status = out->http.status;
    parse_json(out);
    return out->status;
}

void api_resp_free(api_resp *r)
{
    if (r->json)
        json_decref(r->json);
    test_http_free(&r->http);
    memset(r, 0, sizeof *r);
}

int api_call(int port, const char *method, const char *path, const char *token,
             json_t *body_or_null, json_t **out_json)
{
    char full[ROT_LEN + 16];
    snprintf(full, sizeof full, "%s%s", API_PREFIX, path);
    char *body = NULL;
    if (body_or_null) {
        body = json_dumps(body_or_null, JSON_COMPACT);
        json_decref(body_or_null);
    }
    api_resp r;
    int st = api_request(port, method, full, token, NULL, body, body ? strlen(body) : 0, &r);
    free(body);
    if (out_json) {
        *out_json = r.json;
        r.json = NULL;
    }
    api_resp_free(&r);
    return st;
}

/* The oversized body goes out on a raw socket: after the headers and after every chunk
 * the socket is polled, and sending stops as soon as the server has answered (it may
 * reject on Content-Length alone and close), so the answer is read, not lost to EPIPE. */
static int parse_raw(char *raw, size_t n, api_resp *out)
{
    char *sep = strstr(raw, "\r\n\r\n");
    if (!sep || sscanf(raw, "HTTP/1.%*d %d", &out->http.status) != 1)
        return -1;
    *sep = '\0';
    out->http.headers = strdup(raw);
    size_t off = (size_t)(sep + 4 - raw);
    out->http.body_len = n - off;
    out->http.body = malloc(out->http.body_len + 1);
    memcpy(out->http.body, sep + 4, out->http.body_len);
    out->http.body[out->http.body_len] = '\0';
    out->status = out->http.status;
    parse_json(out);
    return out->status;
}

static bool readable(int fd, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, timeout_ms) > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR));
}

int api_request_oversized(int port, const char *method, const char *full_path,
                          const char *token, size_t body_len, api_resp *out)
{
    memset(out, 0, sizeof *out);
    out->status = -1;
    int fd = test_connect(port);
    if (fd < 0)
        return -1;
    char auth[1024];
    auth_header(auth, sizeof auth, token, NULL);
    char head[2048];
    int hn = snprintf(head, sizeof head,
                      "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n%s"
                      "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                      method, full_path, port, auth, body_len);
    bool ok = send(fd, head, (size_t)hn, MSG_NOSIGNAL) == hn;
    char chunk[16384];
    memset(chunk, 'x', sizeof chunk);
    size_t sent = 0;
    while (ok && sent < body_len && !readable(fd, sent == 0 ? 200 : 0)) {
        size_t n = body_len - sent < sizeof chunk ? body_len - sent : sizeof chunk;
        ssize_t w = send(fd, chunk, n, MSG_NOSIGNAL);
        if (w <= 0)
            break; /* the server closed: read what it said */
        sent += (size_t)w;
    }
    size_t n = 0;
    char *raw = test_recv_all(fd, &n);
    close(fd);
    int st = parse_raw(raw, n, out);
    free(raw);
    return st;
}

/* ---- JSON access ------------------------------------------------------------------------ */

static const json_t *member(const json_t *obj, const char *key)
{
    if (!json_is_object(obj))
        fail_msg("expected a JSON object holding \"%s\", got %s", key,
                 obj ? "another JSON type" : "no JSON body");
    const json_t *v = json_object_get(obj, key);
    if (!v) {
        char *dump = json_dumps(obj, JSON_COMPACT);
        print_error("object: %s\n", dump ? dump : "?");
        free(dump);
        fail_msg("expected key \"%s\" in the object", key);
    }
    return v;
}

long long api_int(const json_t *obj, const char *key)
{
    const json_t *v = member(obj, key);
    if (!json_is_integer(v))
        fail_msg("expected \"%s\" to be an integer", key);
    return (long long)json_integer_value(v);
}

const char *api_str(const json_t *obj, const char *key)
{
    const json_t *v = member(obj, key);
    if (!json_is_string(v))
        fail_msg("expected \"%s\" to be a string", key);
    return json_string_value(v);
}

bool api_bool(const json_t *obj, const char *key)
{
    const json_t *v = member(obj, key);
    if (!json_is_boolean(v))
        fail_msg("expected \"%s\" to be a boolean", key);
    return json_is_true(v);
}

void api_assert_null(const json_t *obj, const char *key)
{
    if (!json_is_null(member(obj, key)))
        fail_msg("expected \"%s\" to be null", key);
}

void api_assert_time(const json_t *obj, const char *key)
{
    const char *s = api_str(obj, key);
    regex_t re;
    assert_int_equal(regcomp(&re,
                             "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$",
                             REG_EXTENDED | REG_NOSUB),
                     0);
    int rc = regexec(&re, s, 0, NULL, 0);
    regfree(&re);
    if (rc != 0)
        fail_msg("expected \"%s\" to be RFC 3339 UTC with milliseconds, got \"%s\"", key, s);
}

json_t *api_items(const json_t *list)
{
    json_t *items = (json_t *)member(list, "items");
    if (!json_is_array(items))
        fail_msg("expected \"items\" to be an array");
    const json_t *c = member(list, "next_cursor");
    if (!json_is_null(c) && !json_is_string(c))
        fail_msg("expected \"next_cursor\" to be a string or null");
    return items;
}

const char *api_next_cursor(const json_t *list)
{
    const json_t *c = member(list, "next_cursor");
    if (json_is_null(c))
        return NULL;
    if (!json_is_string(c))
        fail_msg("expected \"next_cursor\" to be a string or null");
    return json_string_value(c);
}

void api_assert_error(const char *what, int status, const json_t *body, int want_status,
                      const char *code, const char *field)
{
    char *dump = body ? json_dumps(body, JSON_COMPACT) : NULL;
    if (status != want_status) {
        print_error("%s: body %s\n", what, dump ? dump : "(none or not JSON)");
        free(dump);
        fail_msg("%s: expected HTTP %d (%s), got %d", what, want_status, code, status);
    }
    const json_t *err = json_is_object(body) ? json_object_get(body, "error") : NULL;
    const json_t *c = err ? json_object_get(err, "code") : NULL;
    const json_t *m = err ? json_object_get(err, "message") : NULL;
    const json_t *f = err ? json_object_get(err, "field") : NULL;
    const char *why = NULL;
    if (!json_is_string(c) || !json_is_string(m))
        why = "no {\"error\":{\"code\":string,\"message\":string}} body";
    else if (strcmp(json_string_value(c), code) != 0)
        why = "wrong error.code";
    else if (field && (!json_is_string(f) || strcmp(json_string_value(f), field) != 0))
        why = "wrong or missing error.field";
    if (why) {
        print_error("%s: body %s\n", what, dump ? dump : "(none or not JSON)");
        free(dump);
        fail_msg("%s: %s (expected code \"%s\"%s%s%s)", what, why, code,
                 field ? ", field \"" : "", field ? field : "", field ? "\"" : "");
    }
    free(dump);
}

/* ---- users ------------------------------------------------------------------------------- */

char *api_signup(int port, const char *email, const char *name, const char *password,
                 long long *user_id)
{
    json_t *out = NULL;
    int st = api_call(port, "POST", "/auth/signup", NULL,
                      json_pack("{s:s,s:s,s:s}", "email", email, "name", name, "password",
                                password),
                      &out);
    if (st != 201) {
        char *dump = out ? json_dumps(out, JSON_COMPACT) : NULL;
        print_error("signup body: %s\n", dump ? dump : "(none)");
        free(dump);
        fail_msg("signup of %s: expected 201, got %d", email, st);
    }
    const json_t *user = member(out, "user");
    if (user_id)
        *user_id = api_int(user, "id");
    char *token = strdup(api_str(out, "token"));
    json_decref(out);
    return token;
}

char *api_new_user(int port, const char *tag, long long *user_id)
{
    static atomic_int counter;
    int n = atomic_fetch_add(&counter, 1);
    char email[128];
    snprintf(email, sizeof email, "%s-%d@test.chorus.dev", tag, n);
    return api_signup(port, email, tag, "password-123", user_id);
}

/* ---- JWTs -------------------------------------------------------------------------------- */

char *api_b64url(const void *data, size_t len)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *p = data;
    char *out = malloc(len * 4 / 3 + 4);
    size_t o = 0, i = 0;
    for (; i + 2 < len; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];
        out[o++] = tbl[v >> 18 & 63];
        out[o++] = tbl[v >> 12 & 63];
        out[o++] = tbl[v >> 6 & 63];
        out[o++] = tbl[v & 63];
    }
    if (len - i == 1) {
        unsigned v = (unsigned)p[i] << 16;
        out[o++] = tbl[v >> 18 & 63];
        out[o++] = tbl[v >> 12 & 63];
    } else if (len - i == 2) {
        unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8;
        out[o++] = tbl[v >> 18 & 63];
        out[o++] = tbl[v >> 12 & 63];
        out[o++] = tbl[v >> 6 & 63];
    }
    out[o] = '\0';
    return out;
}

char *api_jwt_sign(const char *alg, const char *secret, const char *header_json,
                   const char *payload_json)
{
    char *h = api_b64url(header_json, strlen(header_json));
    char *p = api_b64url(payload_json, strlen(payload_json));
    size_t n = strlen(h) + strlen(p) + 2;
    char *signing = malloc(n);
    snprintf(signing, n, "%s.%s", h, p);
    char *sig = strdup("");
    if (secret) {
        const EVP_MD *md = strcmp(alg, "sha512") == 0 ? EVP_sha512() : EVP_sha256();
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned int maclen = 0;
        if (!HMAC(md, secret, (int)strlen(secret), (const unsigned char *)signing,
                  strlen(signing), mac, &maclen))
            fail_msg("HMAC failed");
        free(sig);
        sig = api_b64url(mac, maclen);
    }
    size_t tn = strlen(signing) + strlen(sig) + 2;
    char *tok = malloc(tn);
    snprintf(tok, tn, "%s.%s", signing, sig);
    free(h);
    free(p);
    free(signing);
    free(sig);
    return tok;
}

char *api_jwt_hs256(const char *secret, const char *sub, long iat_off_s, long exp_off_s)
{
    long now = (long)time(NULL);
    char payload[256];
    snprintf(payload, sizeof payload, "{\"sub\":\"%s\",\"iat\":%ld,\"exp\":%ld}", sub,
             now + iat_off_s, now + exp_off_s);
    return api_jwt_sign("sha256", secret, "{\"alg\":\"HS256\",\"typ\":\"JWT\"}", payload);
}

/* ---- database ---------------------------------------------------------------------------- */

PGresult *api_db_query(PGconn *c, const char *sql, const char *const *params)
{
    int n = 0;
    while (params && params[n])
        n++;
    PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        print_error("sql: %s\n", sql);
        fail_msg("query failed: %s", PQresultErrorMessage(r));
    }
    return r;
}

long long api_db_int(PGconn *c, const char *sql, const char *const *params)
{
    PGresult *r = api_db_query(c, sql, params);
    long long v = 0;
    if (PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
        v = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

char *api_db_snapshot(PGconn *c)
{
    PGresult *t = api_db_query(c,
                               "SELECT quote_ident(table_name) FROM information_schema.tables"
                               " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
                               " AND table_name <> 'schema_migrations' ORDER BY table_name",
                               NULL);
    size_t cap = 256, len = 0;
    char *out = calloc(1, cap);
    for (int i = 0; i < PQntuples(t); i++) {
        const char *name = PQgetvalue(t, i, 0);
        char sql[512];
        snprintf(sql, sizeof sql,
                 "SELECT count(*), coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '-')"
                 " FROM %s x",
                 name);
        PGresult *r = api_db_query(c, sql, NULL);
        char line[256];
        int n = snprintf(line, sizeof line, "%s %s %s\n", name, PQgetvalue(r, 0, 0),
                         PQgetvalue(r, 0, 1));
        PQclear(r);
        while (len + (size_t)n + 1 > cap)
            out = realloc(out, cap *= 2);
        memcpy(out + len, line, (size_t)n + 1);
        len += (size_t)n;
    }
    PQclear(t);
    return out;
}

void api_assert_snapshot_equal(const char *before, const char *after, const char *what)
{
    if (strcmp(before, after) == 0)
        return;
    print_error("tables before:\n%s", before);
    print_error("tables after:\n%s", after);
    fail_msg("%s: expected no change in any table, but the tables changed", what);
}

void api_assert_refused_unchanged(int port, PGconn *db, const char *what, const char *method,
                                  const char *path, const char *token, json_t *body,
                                  int status, const char *code, const char *field)
{
    char *before = api_db_snapshot(db);
    json_t *out = NULL;
    int st = api_call(port, method, path, token, body, &out);
    api_assert_error(what, st, out, status, code, field);
    if (out)
        json_decref(out);
    char *after = api_db_snapshot(db);
    api_assert_snapshot_equal(before, after, what);
    free(before);
    free(after);
}

/* ---- server fixture --------------------------------------------------------------------- */

/* A db of the Redis server of REDIS_URL of this test's own, emptied. Handed out by a
 * counter in db 0 (tests/run flushes the server first), so tests that run at once
 * never share one: a hash of the tag did, once. */
void api_redis_db(api_server *s)
{
    char host[64];
    int port, db;
    if (rclient_parse_url(test_env("REDIS_URL"), host, sizeof host, &port, &db) != 0)
        fail_msg("REDIS_URL is not a redis:// URL");
    redisContext *rc = redisConnect(host, port);
    if (!rc || rc->err)
        fail_msg("cannot connect to REDIS_URL");
    redisReply *n = redisCommand(rc, "INCR chorus:test:next_db");
    if (!n || n->type != REDIS_REPLY_INTEGER)
        fail_msg("INCR chorus:test:next_db failed");
    db = 1 + (int)((n->integer - 1) % 63);
    freeReplyObject(n);
    snprintf(s->redis_url, sizeof s->redis_url, "redis://%s:%d/%d", host, port, db);
    redisReply *r = redisCommand(rc, "SELECT %d", db);
    if (!r || r->type == REDIS_REPLY_ERROR)
        fail_msg("SELECT %d: %s (start Redis with --databases 64)", db, r ? r->str : "?");
    freeReplyObject(r);
    freeReplyObject(redisCommand(rc, "FLUSHDB"));
    redisFree(rc);
}

void api_db_create(api_server *s, const char *tag)
{
    api_redis_db(s);
    PGconn *c = PQconnectdb(test_env("DATABASE_URL"));
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("cannot connect to DATABASE_URL: %s", PQerrorMessage(c));
    snprintf(s->db_name, sizeof s->db_name, "chorus_api_%s_%d", tag, (int)getpid());
    char sql[256];
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", s->db_name);
    PQclear(PQexec(c, sql));
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", s->db_name);
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        fail_msg("CREATE DATABASE %s: %s", s->db_name, PQresultErrorMessage(r));
    PQclear(r);
    const char *host = PQhost(c), *port = PQport(c), *user = PQuser(c), *pass = PQpass(c);
    bool has_pass = pass && *pass;
    snprintf(s->db_conninfo, sizeof s->db_conninfo, "host=%s port=%s user=%s dbname=%s%s%s",
             host, port, user, s->db_name, has_pass ? " password=" : "", has_pass ? pass : "");
    if (host[0] == '/') /* a socket directory */
        snprintf(s->db_url, sizeof s->db_url, "postgresql:///%s?host=%s&port=%s&user=%s%s%s",
                 s->db_name, api_urlenc(host), port, api_urlenc(user),
                 has_pass ? "&password=" : "", has_pass ? api_urlenc(pass) : "");
    else
        snprintf(s->db_url, sizeof s->db_url, "postgresql://%s%s%s@%s:%s/%s", api_urlenc(user),
                 has_pass ? ":" : "", has_pass ? api_urlenc(pass) : "", host, port, s->db_name);
    PQfinish(c);

    char err[1024];
    if (migrate_run(s->db_conninfo, err, sizeof err) < 0)
        fail_msg("migrate_run on %s: %s", s->db_name, err);
    s->pg = PQconnectdb(s->db_conninfo);
    if (PQstatus(s->pg) != CONNECTION_OK)
        fail_msg("cannot connect to %s: %s", s->db_name, PQerrorMessage(s->pg));
}

void api_db_drop(api_server *s)
{
    if (s->pg)
        PQfinish(s->pg);
    s->pg = NULL;
    if (!s->db_name[0])
        return;
    PGconn *c = PQconnectdb(test_env("DATABASE_URL"));
    char sql[256];
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", s->db_name);
    PQclear(PQexec(c, sql));
    PQfinish(c);
}

void api_server_start(api_server *s, const char *const *extra_env)
{
    api_server_start_roles(s, "gateway", extra_env);
}

void api_server_start_roles(api_server *s, const char *roles, const char *const *extra_env)
{
    s->port = test_free_port();
    static char env_db[600], env_redis[600], env_port[64];
    snprintf(env_db, sizeof env_db, "CHORUS_DATABASE_URL=%s", s->db_url);
    snprintf(env_redis, sizeof env_redis, "CHORUS_REDIS_URL=%s",
             s->redis_url[0] ? s->redis_url : test_env("REDIS_URL"));
    snprintf(env_port, sizeof env_port, "CHORUS_GATEWAY_PORT=%d", s->port);
    const char *env[32] = {env_db, env_redis, env_port,
                           "CHORUS_JWT_SECRET=" API_JWT_SECRET,
                           "CHORUS_RATE_LIMIT_PER_S=0"};
    int n = 5;
    for (int i = 0; extra_env && extra_env[i] && n < 31; i++)
        env[n++] = extra_env[i]; /* putenv in order: a later entry wins */
    env[n] = NULL;
    const char *args[] = {"run", "--roles", roles, NULL};
    assert_int_equal(test_proc_start(&s->proc, args, env), 0);
    if (test_wait_http(s->port, "/readyz", 200, 20000) != 0) {
        test_proc_dump_log(&s->proc);
        fail_msg("chorus (%s, gateway on port %d) did not answer /readyz 200 within 20 s",
                 roles, s->port);
    }
}

int api_server_start_wss(api_server *s, const char *node_id, const char *const *extra_env)
{
    int port = test_free_port();
    static char env_wss[64], env_node[128];
    snprintf(env_wss, sizeof env_wss, "CHORUS_WSS_PORT=%d", port);
    snprintf(env_node, sizeof env_node, "CHORUS_NODE_ID=%s", node_id);
    const char *env[24] = {env_wss, env_node};
    int n = 2;
    for (int i = 0; extra_env && extra_env[i] && n < 23; i++)
        env[n++] = extra_env[i];
    env[n] = NULL;
    api_server_start_roles(s, "gateway,wss,outbox", env);
    return port;
}

void api_server_stop(api_server *s)
{
    if (s->proc.pid <= 0)
        return;
    int rc = test_proc_stop(&s->proc, SIGTERM, 15000);
    if (rc != 0) {
        test_proc_dump_log(&s->proc);
        fail_msg("chorus should exit 0 on SIGTERM, exited with %d (log: %s)", rc,
                 s->proc.log_path);
    }
    unlink(s->proc.log_path);
}

json_t *api_must(int port, int want, const char *method, const char *path, const char *token,
                 json_t *body)
{
    json_t *out = NULL;
    int st = api_call(port, method, path, token, body, &out);
    if (st != want) {
        char *d = out ? json_dumps(out, JSON_COMPACT) : NULL;
        print_error("body: %s\n", d ? d : "(none)");
        free(d);
        fail_msg("%s %s: expected HTTP %d, got %d", method, path, want, st);
    }
    return out;
}

void api_must_drop(int port, int want, const char *method, const char *path, const char *token,
                   json_t *body)
{
    json_decref(api_must(port, want, method, path, token, body));
}

long long api_assert_gapless(PGconn *db, long long ch, const char *what)
{
    const char *p[] = {api_p("%lld", ch), NULL};
    PGresult *r = api_db_query(db,
                               "SELECT count(*), count(DISTINCT seq), coalesce(min(seq), 0),"
                               " coalesce(max(seq), 0),"
                               " (SELECT last_seq FROM channels WHERE id = $1)"
                               " FROM outbox WHERE stream = 'ch' AND channel_id = $1",
                               p);
    long long n = atoll(PQgetvalue(r, 0, 0)), distinct = atoll(PQgetvalue(r, 0, 1)),
              lo = atoll(PQgetvalue(r, 0, 2)), hi = atoll(PQgetvalue(r, 0, 3)),
              last = atoll(PQgetvalue(r, 0, 4));
    PQclear(r);
    if (n != last || distinct != last || hi != last || (last > 0 && lo != 1))
        fail_msg("%s: channel %lld: events should hold seqs 1..%lld once each, found %lld"
                 " rows, %lld distinct, min %lld, max %lld",
                 what, ch, last, n, distinct, lo, hi);
    return last;
}
