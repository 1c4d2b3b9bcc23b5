/* test_config.c - defaults, environment, flags, validation and help of config. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "chorus/config.h"
#include "chorus/status.h"

#define SECRET "0123456789abcdef0123456789abcdef"

/* Every environment variable config reads, so a test starts from a clean slate whatever
 * the environment of the test runner (tests/run sets DATABASE_URL and REDIS_URL). */
static const char *const env_vars[] = {
    "CHORUS_ROLES", "CHORUS_DATABASE_URL", "CHORUS_REDIS_URL", "CHORUS_PARTITIONS",
    "CHORUS_BIND", "CHORUS_PUBLIC_HOST", "CHORUS_GATEWAY_PORT", "CHORUS_WSS_PORT",
    "CHORUS_ADMIN_PORT", "CHORUS_NODE_ID", "CHORUS_JWT_SECRET", "CHORUS_JWT_TTL_S",
    "CHORUS_PG_POOL_SIZE", "CHORUS_PG_QUEUE_MAX", "CHORUS_PG_CONNECT_TIMEOUT_MS",
    "CHORUS_REDIS_MAX_PENDING", "CHORUS_MAX_BODY_BYTES", "CHORUS_MAX_CONNECTIONS",
    "CHORUS_SHUTDOWN_TIMEOUT_MS", "CHORUS_LOG_LEVEL", "CHORUS_LOG_FORMAT", "DATABASE_URL",
    "REDIS_URL",
};

static int clear_env(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof env_vars / sizeof env_vars[0]; i++)
        unsetenv(env_vars[i]);
    return 0;
}

/* Loads with argv = {"chorus", args..., NULL}; returns the status, err filled. */
static int load(chorus_config *cfg, char *err, size_t errlen, const char *const *args)
{
    char *argv[16] = {"chorus"};
    int argc = 1;
    for (; args && args[argc - 1]; argc++)
        argv[argc] = (char *)args[argc - 1];
    err[0] = '\0';
    return config_load(cfg, argc, argv, err, errlen);
}

/* Loads args expecting failure and checks the message mentions want. */
static void assert_load_fails(const char *const *args, const char *want)
{
    chorus_config cfg;
    char err[256];
    assert_int_equal(load(&cfg, err, sizeof err, args), CHORUS_ERR);
    if (!strstr(err, want))
        fprintf(stderr, "error \"%s\" lacks \"%s\"\n", err, want);
    assert_non_null(strstr(err, want));
    config_free(&cfg); /* harmless after a failed load */
}

/* With nothing set, every key has its documented default. */
static void test_defaults(void **state)
{
    (void)state;
    chorus_config cfg;
    char err[256];
    assert_int_equal(load(&cfg, err, sizeof err, NULL), CHORUS_OK);
    assert_string_equal(cfg.roles, "gateway,wss,outbox,indexer");
    assert_string_equal(cfg.database_url, "postgresql://chorus@127.0.0.1:55432/chorus");
    assert_string_equal(cfg.redis_url, "redis://127.0.0.1:56379/0");
    assert_int_equal(cfg.partitions, 256);
    assert_string_equal(cfg.bind, "127.0.0.1");
    assert_string_equal(cfg.public_host, "127.0.0.1");
    assert_int_equal(cfg.gateway_port, 8080);
    assert_int_equal(cfg.wss_port, 9001);
    assert_int_equal(cfg.admin_port, 0);
    assert_string_equal(cfg.node_id, "");
    assert_string_equal(cfg.jwt_secret, "");
    assert_int_equal(cfg.jwt_ttl_s, 86400);
    assert_int_equal(cfg.pg_pool_size, 8);
    assert_int_equal(cfg.pg_queue_max, 4096);
    assert_int_equal(cfg.pg_connect_timeout_ms, 5000);
    assert_int_equal(cfg.redis_max_pending, 100000);
    assert_int_equal(cfg.max_body_bytes, 1048576);
    assert_int_equal(cfg.max_connections, 0);
    assert_int_equal(cfg.shutdown_timeout_ms, 10000);
    assert_string_equal(cfg.log_level, "info");
    assert_string_equal(cfg.log_format, "text");
    config_free(&cfg);
    assert_null(cfg.roles);
}

/* CHORUS_<KEY> sets a key. */
static void test_env(void **state)
{
    (void)state;
    setenv("CHORUS_GATEWAY_PORT", "8181", 1);
    setenv("CHORUS_ROLES", "wss", 1);
    setenv("CHORUS_NODE_ID", "node-7", 1);
    setenv("CHORUS_PG_CONNECT_TIMEOUT_MS", "250", 1);
    chorus_config cfg;
    char err[256];
    assert_int_equal(load(&cfg, err, sizeof err, NULL), CHORUS_OK);
    assert_int_equal(cfg.gateway_port, 8181);
    assert_string_equal(cfg.roles, "wss");
    assert_string_equal(cfg.node_id, "node-7");
    assert_int_equal(cfg.pg_connect_timeout_ms, 250);
    config_free(&cfg);
}

/* DATABASE_URL / REDIS_URL apply only while the CHORUS_ variable is unset. */
static void test_alias(void **state)
{
    (void)state;
    setenv("DATABASE_URL", "postgresql://alias/db", 1);
    setenv("REDIS_URL", "redis://10.0.0.1:6379/0", 1);
    chorus_config cfg;
    char err[256];
    assert_int_equal(load(&cfg, err, sizeof err, NULL), CHORUS_OK);
    assert_string_equal(cfg.database_url, "postgresql://alias/db");
    assert_string_equal(cfg.redis_url, "redis://10.0.0.1:6379/0");
    config_free(&cfg);

    setenv("CHORUS_DATABASE_URL", "postgresql://chorus/db", 1);
    setenv("CHORUS_REDIS_URL", "redis://10.0.0.2:6379/1", 1);
    assert_int_equal(load(&cfg, err, sizeof err, NULL), CHORUS_OK);
    assert_string_equal(cfg.database_url, "postgresql://chorus/db");
    assert_string_equal(cfg.redis_url, "redis://10.0.0.2:6379/1");
    config_free(&cfg);
}

/* A flag overrides the environment; both --key=value and --key value work; the last
 * occurrence wins. */
static void test_flags(void **state)
{
    (void)state;
    setenv("CHORUS_GATEWAY_PORT", "8181", 1);
    setenv("CHORUS_DATABASE_URL", "postgresql://env/db", 1);
    chorus_config cfg;
    char err[256];
    const char *args[] = {"--gateway-port=8282", "--database-url", "postgresql://flag/db",
                          "--pg-pool-size", "3", "--pg-pool-size=4", "--node-id=",
                          "--log-format", "json", NULL};
    assert_int_equal(load(&cfg, err, sizeof err, args), CHORUS_OK);
    assert_int_equal(cfg.gateway_port, 8282);
    assert_string_equal(cfg.database_url, "postgresql://flag/db");
    assert_int_equal(cfg.pg_pool_size, 4);
    assert_string_equal(cfg.node_id, "");
    assert_string_equal(cfg.log_format, "json");
    config_free(&cfg);
}

/* A value may contain '=' (only the first one splits). */
static void test_flag_value_with_equals(void **state)
{
    (void)state;
    chorus_config cfg;
    char err[256];
    const char *args[] = {"--database-url=postgresql://h/db?sslmode=disable", NULL};
    assert_int_equal(load(&cfg, err, sizeof err, args), CHORUS_OK);
    assert_string_equal(cfg.database_url, "postgresql://h/db?sslmode=disable");
    config_free(&cfg);
}

/* Unknown flags, stray arguments and missing values are errors naming the culprit. */
static void test_bad_arguments(void **state)
{
    (void)state;
    assert_load_fails((const char *[]){"--no-such-key=1", NULL}, "--no-such-key");
    assert_load_fails((const char *[]){"--gateway_port=1", NULL}, "--gateway_port");
    assert_load_fails((const char *[]){"run", NULL}, "\"run\"");
    assert_load_fails((const char *[]){"-p", "80", NULL}, "\"-p\"");
    assert_load_fails((const char *[]){"--", NULL}, "\"--\"");
    assert_load_fails((const char *[]){"--roles", NULL}, "--roles needs a value");
    assert_load_fails((const char *[]){"--jwt-secret", "--roles=wss", NULL},
                      "--jwt-secret needs a value");
}

/* Integers must be whole numbers within the key's range, from any source. */
static void test_bad_ints(void **state)
{
    (void)state;
    assert_load_fails((const char *[]){"--gateway-port=80x", NULL}, "gateway_port");
    assert_load_fails((const char *[]){"--gateway-port=", NULL}, "gateway_port");
    assert_load_fails((const char *[]){"--gateway-port= 80", NULL}, "gateway_port");
    assert_load_fails((const char *[]){"--gateway-port=65536", NULL}, "gateway_port");
    assert_load_fails((const char *[]){"--wss-port=-1", NULL}, "wss_port");
    assert_load_fails((const char *[]){"--partitions=0", NULL}, "partitions");
    assert_load_fails((const char *[]){"--partitions=65537", NULL}, "partitions");
    assert_load_fails((const char *[]){"--pg-pool-size=257", NULL}, "pg_pool_size");
    assert_load_fails((const char *[]){"--max-body-bytes=99999999999999999999", NULL},
                      "max_body_bytes");
    setenv("CHORUS_PARTITIONS", "many", 1);
    assert_load_fails(NULL, "CHORUS_PARTITIONS");
    unsetenv("CHORUS_PARTITIONS");
    chorus_config cfg;
    char err[256];
    const char *edge[] = {"--partitions=65536", "--pg-pool-size=1", NULL};
    assert_int_equal(load(&cfg, err, sizeof err, edge), CHORUS_OK);
    assert_int_equal(cfg.partitions, 65536);
    assert_int_equal(cfg.pg_pool_size, 1);
    config_free(&cfg);
}

/* Loads defaults plus a valid secret, for validation tests to modify. */
static void load_valid(chorus_config *cfg)
{
    char err[256];
    const char *args[] = {"--jwt-secret=" SECRET, NULL};
    assert_int_equal(load(cfg, err, sizeof err, args), CHORUS_OK);
    assert_int_equal(config_validate(cfg, err, sizeof err), CHORUS_OK);
}

static void assert_invalid(const chorus_config *cfg, const char *want)
{
    char err[256] = "";
    assert_int_equal(config_validate(cfg, err, sizeof err), CHORUS_ERR);
    if (!strstr(err, want))
        fprintf(stderr, "error \"%s\" lacks \"%s\"\n", err, want);
    assert_non_null(strstr(err, want));
}

/* Replaces a string field of cfg (owned by cfg). */
static void set_str(char **field, const char *v)
{
    free(*field);
    *field = strdup(v);
}

/* Defaults without a JWT secret fail with a hint; a 32-byte one passes; outbox and
 * indexer alone need none. */
static void test_validate_jwt_secret(void **state)
{
    (void)state;
    chorus_config cfg;
    char err[256];
    assert_int_equal(load(&cfg, err, sizeof err, NULL), CHORUS_OK);
    assert_invalid(&cfg, "CHORUS_JWT_SECRET");
    set_str(&cfg.jwt_secret, "0123456789abcdef0123456789abcde"); /* 31 bytes */
    assert_invalid(&cfg, "CHORUS_JWT_SECRET");
    set_str(&cfg.roles, "outbox,indexer");
    assert_int_equal(config_validate(&cfg, err, sizeof err), CHORUS_OK);
    set_str(&cfg.roles, "indexer,wss");
    assert_invalid(&cfg, "CHORUS_JWT_SECRET");
    set_str(&cfg.jwt_secret, SECRET);
    assert_int_equal(config_validate(&cfg, err, sizeof err), CHORUS_OK);
    config_free(&cfg);
}

/* Roles must be a non-empty list of known roles, with no stray spaces or empty items. */
static void test_validate_roles(void **state)
{
    (void)state;
    chorus_config cfg;
    load_valid(&cfg);
    const char *bad[] = {"", "gateway2", "gateway,", ",wss", "gateway, wss", "GATEWAY",
                         "outbox,,indexer"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        set_str(&cfg.roles, bad[i]);
        assert_invalid(&cfg, "roles");
    }
    set_str(&cfg.roles, "indexer,outbox,wss,gateway");
    char err[256];
    assert_int_equal(config_validate(&cfg, err, sizeof err), CHORUS_OK);
    config_free(&cfg);
}

/* Ports, partitions, pool size and logging settings are range-checked. */
static void test_validate_ranges(void **state)
{
    (void)state;
    chorus_config cfg;
    load_valid(&cfg);
    cfg.gateway_port = 0;
    assert_invalid(&cfg, "gateway_port");
    cfg.gateway_port = 8080;
    cfg.wss_port = 0;
    assert_invalid(&cfg, "wss_port");
    cfg.wss_port = 70000;
    assert_invalid(&cfg, "wss_port");
    cfg.wss_port = 9001;
    cfg.admin_port = -1;
    assert_invalid(&cfg, "admin_port");
    cfg.admin_port = 65535;
    cfg.partitions = 0;
    assert_invalid(&cfg, "partitions");
    cfg.partitions = 256;
    cfg.pg_pool_size = 0;
    assert_invalid(&cfg, "pg_pool_size");
    cfg.pg_pool_size = 8;
    set_str(&cfg.log_level, "verbose");
    assert_invalid(&cfg, "log_level");
    set_str(&cfg.log_level, "debug");
    set_str(&cfg.log_format, "xml");
    assert_invalid(&cfg, "log_format");
    set_str(&cfg.log_format, "json");
    char err[256];
    assert_int_equal(config_validate(&cfg, err, sizeof err), CHORUS_OK);
    config_free(&cfg);
}

/* Roles match whole comma-separated items only. */
static void test_has_role(void **state)
{
    (void)state;
    chorus_config cfg = {0};
    cfg.roles = "gateway2,xwss,outbox";
    assert_false(config_has_role(&cfg, "gateway"));
    assert_false(config_has_role(&cfg, "wss"));
    assert_true(config_has_role(&cfg, "outbox"));
    assert_true(config_has_role(&cfg, "gateway2"));
    assert_false(config_has_role(&cfg, "out"));
    assert_false(config_has_role(&cfg, ""));
    cfg.roles = "gateway";
    assert_true(config_has_role(&cfg, "gateway"));
    assert_false(config_has_role(&cfg, "gateway2"));
    assert_false(config_has_role(&cfg, "gate"));
    cfg.roles = "wss,indexer";
    assert_true(config_has_role(&cfg, "wss"));
    assert_true(config_has_role(&cfg, "indexer"));
    cfg.roles = "";
    assert_false(config_has_role(&cfg, "wss"));
    cfg.roles = NULL;
    assert_false(config_has_role(&cfg, "wss"));
}

/* Help lists every key with its flag, environment variable and default. */
static void test_help(void **state)
{
    (void)state;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    config_help(f);
    fclose(f);
    static const char *const want[] = {
        "--roles", "--database-url", "--redis-url", "--partitions", "--bind", "--public-host",
        "--gateway-port", "--wss-port", "--admin-port", "--node-id", "--jwt-secret",
        "--jwt-ttl-s", "--pg-pool-size", "--pg-queue-max", "--pg-connect-timeout-ms",
        "--redis-max-pending", "--max-body-bytes", "--max-connections",
        "--shutdown-timeout-ms", "--log-level", "--log-format",
        "gateway,wss,outbox,indexer", "postgresql://chorus@127.0.0.1:55432/chorus",
        "redis://127.0.0.1:56379/0", "1048576", "DATABASE_URL", "REDIS_URL",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        if (!strstr(text, want[i]))
            fprintf(stderr, "help lacks %s:\n%s", want[i], text);
        assert_non_null(strstr(text, want[i]));
    }
    for (size_t i = 0; i < sizeof env_vars / sizeof env_vars[0]; i++)
        assert_non_null(strstr(text, env_vars[i]));
    /* The environment column starts at the same place on every key line. */
    const char *gw = strstr(text, "  --gateway-port");
    const char *ms = strstr(text, "  --pg-connect-timeout-ms");
    assert_int_equal(strstr(gw, "CHORUS_") - gw, strstr(ms, "CHORUS_") - ms);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults, clear_env),
        cmocka_unit_test_setup(test_env, clear_env),
        cmocka_unit_test_setup(test_alias, clear_env),
        cmocka_unit_test_setup(test_flags, clear_env),
        cmocka_unit_test_setup(test_flag_value_with_equals, clear_env),
        cmocka_unit_test_setup(test_bad_arguments, clear_env),
        cmocka_unit_test_setup(test_bad_ints, clear_env),
        cmocka_unit_test_setup(test_validate_jwt_secret, clear_env),
        cmocka_unit_test_setup(test_validate_roles, clear_env),
        cmocka_unit_test_setup(test_validate_ranges, clear_env),
        cmocka_unit_test_setup(test_has_role, clear_env),
        cmocka_unit_test_setup(test_help, clear_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
