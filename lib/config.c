/* config.c - defaults, environment and flags for every key, from one table.
 *
 * Each key is one row of config_keys: adding a key is adding a row (and a field). The
 * default is written as the string a user would type, so it goes through the same parser
 * as the environment and the flags, and config_help shows it verbatim.
 */
#include "chorus/config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "chorus/log.h"
#include "chorus/status.h"

typedef enum config_kind {
    CONFIG_STR,
    CONFIG_INT,
    CONFIG_BOOL,
} config_kind;

typedef struct config_key {
    const char *name;
    config_kind kind;
    size_t offset;
    const char *def;
    long min, max;         /* CONFIG_INT only */
    const char *alias_env; /* read when CHORUS_<NAME> is unset, or NULL */
    const char *help;
} config_key;

#define KEY_STR(n, d, h) {#n, CONFIG_STR, offsetof(chorus_config, n), d, 0, 0, NULL, h}
#define KEY_INT(n, d, lo, hi, h) {#n, CONFIG_INT, offsetof(chorus_config, n), d, lo, hi, NULL, h}

static const config_key config_keys[] = {
    KEY_STR(roles, "gateway,wss,outbox,indexer",
            "roles this process runs, comma-separated: gateway, wss, outbox, indexer, scaler"),
    {"database_url", CONFIG_STR, offsetof(chorus_config, database_url),
     "postgresql://chorus@127.0.0.1:55432/chorus", 0, 0, "DATABASE_URL",
     "Postgres connection URI (DATABASE_URL is read when CHORUS_DATABASE_URL is unset)"},
    {"redis_url", CONFIG_STR, offsetof(chorus_config, redis_url), "redis://127.0.0.1:56379/0",
     0, 0, "REDIS_URL",
     "Redis URL redis://ip:port[/db] (REDIS_URL is read when CHORUS_REDIS_URL is unset)"},
    KEY_INT(partitions, "256", 1, 65536,
            "stream partitions; every process of an installation must agree"),
    KEY_STR(bind, "127.0.0.1", "listen address of every port of this process"),
    KEY_STR(public_host, "127.0.0.1", "host name put into URLs handed to clients"),
    KEY_INT(gateway_port, "8080", 0, 65535, "HTTP port of the gateway (REST, GraphQL)"),
    KEY_INT(wss_port, "9001", 0, 65535, "WebSocket port of the wss role"),
    KEY_INT(admin_port, "0", 0, 65535, "extra /metrics, /healthz, /readyz port; 0 = none"),
    KEY_STR(node_id, "", "this process' id in registries; empty = host-pid"),
    KEY_STR(jwt_secret, "", "HS256 key, at least 32 bytes; required by gateway and wss"),
    KEY_INT(jwt_ttl_s, "86400", 1, INT_MAX, "lifetime of issued tokens, seconds"),
    KEY_INT(pg_pool_size, "8", 1, 256, "Postgres connections per pool"),
    KEY_INT(pg_queue_max, "4096", 0, INT_MAX,
            "queries waiting for a Postgres connection before requests are refused"),
    KEY_INT(pg_connect_timeout_ms, "5000", 1, INT_MAX, "Postgres connect timeout, ms; also bounds a query's wait for a free pool connection"),
    KEY_INT(redis_max_pending, "100000", 1, INT_MAX,
            "Redis commands in flight per client before requests are refused"),
    KEY_INT(stream_maxlen, "10000", 100, INT_MAX,
            "entries kept per partition stream (approximate: XADD MAXLEN ~)"),
    KEY_INT(outbox_batch, "1000", 1, 10000, "outbox rows one batch publishes at most"),
    KEY_INT(outbox_lanes, "2", 1, 16,
            "batches one outbox worker runs at once, each on its own connection"),
    KEY_INT(outbox_poll_max_ms, "100", 1, 10000,
            "longest wait between two polls of an idle outbox (a writer's knock wakes it "
            "at once), ms"),
    KEY_INT(outbox_lease_ms, "3000", 300, 600000,
            "outbox worker lease; a dead worker's partitions move within 4/3 of it, ms"),
    KEY_INT(outbox_retention_s, "3600", 0, INT_MAX,
            "published outbox rows are deleted after this many seconds"),
    KEY_INT(wss_queue_bytes, "1048576", 4096, INT_MAX,
            "outbound bytes queued per WebSocket session before it is closed with 4008"),
    KEY_INT(wss_heartbeat_ms, "30000", 100, 3600000,
            "heartbeat a WebSocket client is told in hello; silent for twice this, it is closed"),
    KEY_INT(wss_recent_events, "256", 0, 100000,
            "recent events a wss node keeps per channel to serve resume without Postgres"),
    KEY_INT(wss_recent_bytes, "67108864", 0, INT_MAX,
            "bytes all channels' recent events may take on one wss node"),
    KEY_INT(wss_read_gap_ms, "5", 0, 1000,
            "after a read that brought events a wss node waits this long before the next (fewer, fuller reads); ms"),
    KEY_INT(stream_sweep_ms, "1000", 0, 60000,
            "stream readers (wss nodes, the gateway) read only the streams the doorbell names, and all of them this often (what a lost bell can delay); 0 = no doorbell: every read names every stream; ms"),
    KEY_INT(max_body_bytes, "1048576", 1, INT_MAX, "larger request bodies get 413"),
    KEY_INT(rate_limit_per_s, "50", 0, 1000000,
            "writes per second per user (and signups/logins per client address); 0 = no limit"),
    KEY_INT(rate_limit_burst, "200", 1, 1000000, "writes a user may make at once"),
    KEY_INT(workers, "2", 1, 64, "threads for CPU-heavy work (password hashing)"),
    KEY_INT(max_connections, "0", 0, INT_MAX,
            "WebSocket sessions a wss node takes before closing new ones with 4009; 0 = open-files limit - pg_pool_size - 192"),
    KEY_INT(wss_replicas_min, "1", 0, 1000, "scaler: WSS replicas it keeps running at least"),
    KEY_INT(wss_replicas_max, "8", 1, 1000,
            "scaler: WSS replicas it starts at most (each on the next port from wss_port)"),
    KEY_INT(scale_up_load, "80", 1, 100,
            "scaler: start a replica when live nodes' connections pass this % of capacity"),
    KEY_INT(scale_down_load, "30", 0, 99,
            "scaler: retire a replica when the load stays under this % for scale_down_after_s"),
    KEY_INT(scale_down_after_s, "60", 1, 86400,
            "scaler: how long the load must stay low before a replica is retired"),
    KEY_INT(rebalance_per_s, "100", 0, 100000,
            "scaler: sessions a second it moves at most, fleet-wide, to even the load; 0 = never"),
    KEY_INT(shutdown_timeout_ms, "10000", 0, INT_MAX,
            "graceful stop: time to drain before connections are cut, ms"),
    KEY_STR(log_level, "info", "debug, info, warn or error"),
    KEY_STR(log_format, "text", "text or json (one JSON object per line)"),
};

#define CONFIG_NKEYS (sizeof config_keys / sizeof config_keys[0])

static const char *const config_roles[] = {"gateway", "wss", "outbox", "indexer", "scaler"};

/* "gateway_port" -> "CHORUS_GATEWAY_PORT" (prefix "CHORUS_") or "--gateway-port". */
static void key_env_name(const config_key *k, char *out, size_t n)
{
    int w = snprintf(out, n, "CHORUS_%s", k->name);
    for (char *p = out + 7; w > 0 && *p; p++)
        *p = (char)toupper((unsigned char)*p);
}

static void key_flag_name(const config_key *k, char *out, size_t n)
{
    snprintf(out, n, "--%s", k->name);
    for (char *p = out + 2; *p; p++)
        if (*p == '_')
            *p = '-';
}

static const config_key *key_by_flag(const char *flag, size_t len)
{
    char name[64];
    for (size_t i = 0; i < CONFIG_NKEYS; i++) {
        key_flag_name(&config_keys[i], name, sizeof name);
        if (strlen(name) == len && memcmp(name, flag, len) == 0)
            return &config_keys[i];
    }
    return NULL;
}

static int parse_int(const config_key *k, const char *v, const char *from, int *out,
                     char *err, size_t errlen)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (!*v || isspace((unsigned char)*v) || *end || errno == ERANGE) {
        chorus_set_err(err, errlen, "%s: \"%s\" (from %s) is not an integer", k->name, v, from);
        return CHORUS_ERR;
    }
    if (n < k->min || n > k->max) {
        chorus_set_err(err, errlen, "%s: %ld (from %s) is out of range %ld..%ld", k->name, n, from,
                k->min, k->max);
        return CHORUS_ERR;
    }
    *out = (int)n;
    return CHORUS_OK;
}

static int parse_bool(const config_key *k, const char *v, const char *from, bool *out,
                      char *err, size_t errlen)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcmp(v, yes[i]) == 0 || strcmp(v, no[i]) == 0) {
            *out = strcmp(v, yes[i]) == 0;
            return CHORUS_OK;
        }
    }
    chorus_set_err(err, errlen, "%s: \"%s\" (from %s) is not a boolean (true/false)", k->name, v,
            from);
    return CHORUS_ERR;
}

/* Stores v into the field of k; from names the source for error messages. */
static int key_set(chorus_config *cfg, const config_key *k, const char *v, const char *from,
                   char *err, size_t errlen)
{
    void *field = (char *)cfg + k->offset;
    switch (k->kind) {
    case CONFIG_INT:
        return parse_int(k, v, from, field, err, errlen);
    case CONFIG_BOOL:
        return parse_bool(k, v, from, field, err, errlen);
    case CONFIG_STR:
        break;
    }
    char *copy = strdup(v);
    if (!copy) {
        chorus_set_err(err, errlen, "%s: out of memory", k->name);
        return CHORUS_ERR;
    }
    char **slot = field;
    free(*slot);
    *slot = copy;
    return CHORUS_OK;
}

static int load_defaults_env(chorus_config *cfg, char *err, size_t errlen)
{
    for (size_t i = 0; i < CONFIG_NKEYS; i++) {
        const config_key *k = &config_keys[i];
        char env[64];
        key_env_name(k, env, sizeof env);
        const char *v = getenv(env);
        const char *from = env;
        if (!v && k->alias_env) {
            v = getenv(k->alias_env);
            from = k->alias_env;
        }
        if (!v) {
            v = k->def;
            from = "default";
        }
        if (key_set(cfg, k, v, from, err, errlen) != CHORUS_OK)
            return CHORUS_ERR;
    }
    return CHORUS_OK;
}

/* Handles argv[*i] (and argv[*i + 1] for "--key value"); advances *i past them. */
static int load_flag(chorus_config *cfg, int argc, char **argv, int *i, char *err,
                     size_t errlen)
{
    const char *arg = argv[*i];
    if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
        chorus_set_err(err, errlen, "unexpected argument \"%s\" (options are --key=value)", arg);
        return CHORUS_ERR;
    }
    const char *eq = strchr(arg, '=');
    size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
    const config_key *k = key_by_flag(arg, len);
    if (!k) {
        chorus_set_err(err, errlen, "unknown flag %.*s", (int)len, arg);
        return CHORUS_ERR;
    }
    const char *v = eq ? eq + 1 : NULL;
    const char *next = *i + 1 < argc ? argv[*i + 1] : NULL;
    /* A value that looks like a flag is taken as a missing value, so
     * "--jwt-secret --roles wss" fails instead of using "--roles" as the secret. */
    bool next_is_value = next && strncmp(next, "--", 2) != 0;
    if (!v && k->kind == CONFIG_BOOL && !next_is_value)
        v = "true";
    if (!v && next_is_value) {
        v = next;
        (*i)++;
    }
    if (!v) {
        chorus_set_err(err, errlen, "flag %s needs a value", arg);
        return CHORUS_ERR;
    }
    (*i)++;
    char from[72];
    snprintf(from, sizeof from, "%.*s", (int)len, arg);
    return key_set(cfg, k, v, from, err, errlen);
}

int config_load(chorus_config *cfg, int argc, char **argv, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof *cfg);
    int rc = load_defaults_env(cfg, err, errlen);
    for (int i = 1; rc == CHORUS_OK && i < argc;)
        rc = load_flag(cfg, argc, argv, &i, err, errlen);
    if (rc != CHORUS_OK)
        config_free(cfg); /* nothing to free on failure: the caller may skip config_free */
    return rc;
}

/* ---- validation ---- */

static bool role_known(const char *s, size_t n)
{
    for (size_t i = 0; i < sizeof config_roles / sizeof config_roles[0]; i++)
        if (strlen(config_roles[i]) == n && memcmp(config_roles[i], s, n) == 0)
            return true;
    return false;
}

static int validate_roles(const char *roles, char *err, size_t errlen)
{
    if (!roles || !*roles) {
        chorus_set_err(err, errlen, "roles: empty; name at least one of gateway,wss,outbox,indexer,scaler");
        return CHORUS_ERR;
    }
    for (const char *p = roles;;) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (!role_known(p, n)) {
            chorus_set_err(err, errlen,
                    "roles: unknown role \"%.*s\" (expected gateway,wss,outbox,indexer,scaler)",
                    (int)n, p);
            return CHORUS_ERR;
        }
        if (!end)
            return CHORUS_OK;
        p = end + 1;
    }
}

/* Ranges are checked again here because a config may be built without config_load. */
static int validate_ranges(const chorus_config *cfg, char *err, size_t errlen)
{
    for (size_t i = 0; i < CONFIG_NKEYS; i++) {
        const config_key *k = &config_keys[i];
        const void *field = (const char *)cfg + k->offset;
        if (k->kind == CONFIG_STR && !*(char *const *)field) {
            chorus_set_err(err, errlen, "%s: not set", k->name);
            return CHORUS_ERR;
        }
        if (k->kind != CONFIG_INT)
            continue;
        int v = *(const int *)field;
        if (v < k->min || v > k->max) {
            chorus_set_err(err, errlen, "%s: %d is out of range %ld..%ld", k->name, v, k->min, k->max);
            return CHORUS_ERR;
        }
    }
    return CHORUS_OK;
}

static int validate_ports(const chorus_config *cfg, char *err, size_t errlen)
{
    if (cfg->gateway_port <= 0) {
        chorus_set_err(err, errlen, "gateway_port: must be 1..65535");
        return CHORUS_ERR;
    }
    if (cfg->wss_port <= 0) {
        chorus_set_err(err, errlen, "wss_port: must be 1..65535");
        return CHORUS_ERR;
    }
    return CHORUS_OK;
}

static int validate_logging(const chorus_config *cfg, char *err, size_t errlen)
{
    log_level level;
    if (log_level_parse(cfg->log_level, &level) != CHORUS_OK) {
        chorus_set_err(err, errlen, "log_level: \"%s\" is not one of debug, info, warn, error",
                cfg->log_level);
        return CHORUS_ERR;
    }
    if (strcmp(cfg->log_format, "text") != 0 && strcmp(cfg->log_format, "json") != 0) {
        chorus_set_err(err, errlen, "log_format: \"%s\" is not text or json", cfg->log_format);
        return CHORUS_ERR;
    }
    return CHORUS_OK;
}

int config_validate(const chorus_config *cfg, char *err, size_t errlen)
{
    if (validate_ranges(cfg, err, errlen) != CHORUS_OK ||
        validate_roles(cfg->roles, err, errlen) != CHORUS_OK ||
        validate_ports(cfg, err, errlen) != CHORUS_OK ||
        validate_logging(cfg, err, errlen) != CHORUS_OK)
        return CHORUS_ERR;
    bool signs = config_has_role(cfg, "gateway") || config_has_role(cfg, "wss");
    if (signs && strlen(cfg->jwt_secret) < 32) {
        chorus_set_err(err, errlen,
                "jwt_secret: the gateway and wss roles need a secret of at least 32 bytes; "
                "set CHORUS_JWT_SECRET (or --jwt-secret)");
        return CHORUS_ERR;
    }
    return CHORUS_OK;
}

/* ---- help ---- */

static const char *kind_meta(config_kind kind)
{
    return kind == CONFIG_INT ? "<int>" : kind == CONFIG_BOOL ? "<bool>" : "<string>";
}

void config_help(FILE *out)
{
    int wflag = 4, wenv = 11;
    char flag[96], env[64];
    for (size_t i = 0; i < CONFIG_NKEYS; i++) {
        key_flag_name(&config_keys[i], flag, sizeof flag);
        key_env_name(&config_keys[i], env, sizeof env);
        int fl = (int)(strlen(flag) + 1 + strlen(kind_meta(config_keys[i].kind)));
        wflag = fl > wflag ? fl : wflag;
        wenv = (int)strlen(env) > wenv ? (int)strlen(env) : wenv;
    }
    fprintf(out, "Configuration: a flag overrides the environment, which overrides the "
                 "default.\n\n");
    fprintf(out, "  %-*s  %-*s  %s\n", wflag, "FLAG", wenv, "ENVIRONMENT", "DEFAULT");
    for (size_t i = 0; i < CONFIG_NKEYS; i++) {
        const config_key *k = &config_keys[i];
        key_flag_name(k, flag, sizeof flag);
        key_env_name(k, env, sizeof env);
        size_t fl = strlen(flag);
        snprintf(flag + fl, sizeof flag - fl, " %s", kind_meta(k->kind));
        fprintf(out, "  %-*s  %-*s  %s\n", wflag, flag, wenv, env, *k->def ? k->def : "\"\"");
        if (k->kind != CONFIG_INT)
            fprintf(out, "      %s\n", k->help);
        else if (k->max == INT_MAX)
            fprintf(out, "      %s (at least %ld)\n", k->help, k->min);
        else
            fprintf(out, "      %s (%ld..%ld)\n", k->help, k->min, k->max);
    }
}

bool config_has_role(const chorus_config *cfg, const char *role)
{
    if (!cfg || !cfg->roles || !role || !*role)
        return false;
    size_t n = strlen(role);
    for (const char *p = cfg->roles;;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && memcmp(p, role, n) == 0)
            return true;
        if (!end)
            return false;
        p = end + 1;
    }
}

void config_free(chorus_config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < CONFIG_NKEYS; i++) {
        const config_key *k = &config_keys[i];
        if (k->kind != CONFIG_STR)
            continue;
        char **slot = (char **)((char *)cfg + k->offset);
        free(*slot);
        *slot = NULL;
    }
}
