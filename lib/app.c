/* app.c - one Chorus process: subcommands, the loop, shared clients, shutdown. */
#include "chorus/app.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libwebsockets.h>

#include "app_internal.h"
#include "chorus/health.h"
#include "chorus/httpd.h"
#include "chorus/jwt.h"
#include "chorus/knock.h"
#include "chorus/log.h"
#include "chorus/metrics.h"
#include "chorus/migrate.h"
#include "chorus/pgpool.h"
#include "chorus/rclient.h"
#include "chorus/status.h"

struct ev_loop *app_loop(app *a) { return a->loop; }
const chorus_config *app_config(app *a) { return &a->cfg; }
pgpool *app_pg(app *a) { return a->pg; }
rclient *app_redis(app *a) { return a->redis; }
const char *app_node_id(app *a) { return a->node_id; }
void app_outbox_knock(app *a) { knocker_knock(a->knock); }

httpd *app_http(app *a, int port)
{
    for (int i = 0; i < a->nhttp; i++)
        if (httpd_port(a->http[i]) == port)
            return a->http[i];
    if (a->nhttp >= APP_MAX_LISTENERS)
        return NULL;
    httpd_opts o = {
        .bind = a->cfg.bind,
        .port = port,
        .name = port == a->cfg.gateway_port ? "gateway" : port == a->cfg.wss_port ? "wss" : "admin",
        .max_body_bytes = (size_t)a->cfg.max_body_bytes,
        .keepalive_s = 30,
        .reserve_fds = a->cfg.pg_pool_size + 64,
    };
    httpd *h = httpd_new(a->lws, &o);
    if (!h)
        return NULL;
    app_admin_routes(a, h);
    a->http[a->nhttp++] = h;
    return h;
}

static const role_def *find_role(const role_def *const *roles, int nroles, const char *name)
{
    for (int i = 0; i < nroles; i++)
        if (strcmp(roles[i]->name, name) == 0)
            return roles[i];
    return NULL;
}

/* Picks the roles named in --roles out of this binary's table. */
static int select_roles(app *a, const role_def *const *roles, int nroles)
{
    char *list = strdup(a->cfg.roles), *save = NULL;
    for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        const role_def *r = find_role(roles, nroles, t);
        if (!r) {
            fprintf(stderr, "chorus: this binary has no role '%s'\n", t);
            free(list);
            return CHORUS_ERR;
        }
        if (find_role(a->roles, a->nroles, t))
            continue;
        a->roles[a->nroles++] = r;
    }
    free(list);
    return a->nroles ? CHORUS_OK : CHORUS_ERR;
}

static void usage(FILE *out, const char *prog, const char *fixed)
{
    fprintf(out,
            "Chorus %s - real-time messaging backend\n\n"
            "Usage: %s [command] [--key=value ...]\n\n"
            "Commands:\n"
            "  run         run the roles%s (default)\n"
            "  migrate     apply pending database migrations and exit\n"
            "  seed-demo   create the demo workspace, users and channels (idempotent)\n"
            "  seed-load USERS CHANNELS MEMBERS [WORKSPACES]\n"
            "              create a load-test population in one transaction; print its\n"
            "              workspaces, channels and users with tokens (loadtest/)\n"
            "  check-streams\n"
            "              read every channel partition stream and check each channel's\n"
            "              seqs are whole and in order (exit 1 on a gap; loadtest/run)\n"
            "  tokens      read user ids (one a line) on stdin, print \"id token\" lines: JWTs\n"
            "              signed with jwt_secret, for operators and the load-test harness\n"
            "  version     print the version\n"
            "  help        this text and every configuration key\n\n",
            CHORUS_VERSION, prog, fixed ? "" : " given by --roles");
    config_help(out);
}

static int load_config(app *a, int argc, char **argv, const char *fixed)
{
    char err[512];
    if (config_load(&a->cfg, argc, argv, err, sizeof err) != CHORUS_OK) {
        fprintf(stderr, "chorus: %s (see --help)\n", err);
        return CHORUS_ERR;
    }
    if (fixed) {
        free(a->cfg.roles);
        a->cfg.roles = strdup(fixed);
    }
    log_level lvl = LOG_LVL_INFO;
    log_level_parse(a->cfg.log_level, &lvl);
    log_init(lvl, strcmp(a->cfg.log_format, "json") == 0, fixed ? fixed : "chorus");
    return CHORUS_OK;
}

static int cmd_migrate(app *a)
{
    char err[1024];
    int n = migrate_run(a->cfg.database_url, err, sizeof err);
    if (n < 0) {
        log_error("migrate: %s", err);
        return 1;
    }
    log_info("migrate: %d migration(s) applied, schema at version %d", n,
             migrate_current(a->cfg.database_url, err, sizeof err));
    return 0;
}

/* Tokens for existing user ids without their passwords: whoever holds jwt_secret can
 * sign them anyway; this saves the load-test harness 100,000 scrypt logins. */
static int cmd_tokens(app *a)
{
    size_t klen = strlen(a->cfg.jwt_secret);
    if (klen < 32) {
        log_error("tokens: jwt_secret must have at least 32 bytes");
        return 2;
    }
    char line[64], token[1024];
    int64_t now = (int64_t)time(NULL);
    while (fgets(line, sizeof line, stdin)) {
        char *end = NULL;
        long long id = strtoll(line, &end, 10);
        if (end == line || id <= 0 || (*end && *end != '\n')) {
            log_error("tokens: not a user id: %s", line);
            return 1;
        }
        if (jwt_sign(a->cfg.jwt_secret, klen, id, now, now + a->cfg.jwt_ttl_s, token,
                     sizeof token) != CHORUS_OK)
            return 1;
        printf("%lld %s\n", id, token);
    }
    return fflush(stdout) == 0 ? 0 : 1;
}

static bool has_flag(int argc, char **argv, const char *flag)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], flag) == 0)
            return true;
    return false;
}

int app_main(int argc, char **argv, const role_def *const *roles, int nroles,
             const char *fixed_roles)
{
    const char *prog = argv[0];
    const char *cmd = "run";
    if (argc > 1 && argv[1][0] != '-') {
        cmd = argv[1];
        argv++;
        argc--;
    }
    if (strcmp(cmd, "help") == 0 || has_flag(argc, argv, "--help") || has_flag(argc, argv, "-h")) {
        usage(stdout, prog, fixed_roles);
        return 0;
    }
    if (strcmp(cmd, "version") == 0) {
        printf("chorus %s\n", CHORUS_VERSION);
        return 0;
    }
    /* seed-load's operands come first; the flags after them are the usual ones (the
     * config parser sees argv from its last operand on, as the program name) */
    char *ops[4] = {NULL, NULL, NULL, NULL};
    int noperands = 0;
    while (strcmp(cmd, "seed-load") == 0 && argc > 1 && argv[1][0] != '-' && noperands < 4) {
        ops[noperands++] = argv[1];
        argv++;
        argc--;
    }
    app *a = calloc(1, sizeof *a);
    if (!a || load_config(a, argc, argv, fixed_roles) != CHORUS_OK) {
        app_free(a);
        return 2;
    }
    int rc;
    if (strcmp(cmd, "migrate") == 0) {
        rc = cmd_migrate(a);
    } else if (strcmp(cmd, "tokens") == 0) {
        rc = cmd_tokens(a);
    } else if (strcmp(cmd, "seed-demo") == 0) {
        rc = app_seed_demo(&a->cfg);
    } else if (strcmp(cmd, "seed-load") == 0) {
        rc = app_seed_load(&a->cfg, noperands, ops);
    } else if (strcmp(cmd, "check-streams") == 0) {
        rc = app_check_streams(&a->cfg);
    } else if (strcmp(cmd, "run") == 0) {
        rc = select_roles(a, roles, nroles) == CHORUS_OK ? app_run(a) : 2;
    } else {
        fprintf(stderr, "chorus: unknown command '%s' (see --help)\n", cmd);
        rc = 2;
    }
    app_free(a);
    return rc;
}
