/* app.h - one Chorus process: a libev loop running any subset of roles.
 *
 * The app owns what roles share: the configuration, the loop, the HTTP listeners, the
 * main Postgres pool and the main Redis client (created only when a running role needs
 * them). A role is a module with start/stop functions; splitting a role into its own
 * process is a matter of which roles a binary is told to run, never of code.
 */
#ifndef CHORUS_APP_H
#define CHORUS_APP_H

#include <stdbool.h>

#include <ev.h>

#include "chorus/config.h"

typedef struct app app;
typedef struct httpd httpd;
typedef struct pgpool pgpool;
typedef struct rclient rclient;

typedef struct role_def {
    const char *name;  /* as in --roles: gateway, wss, outbox, indexer */
    bool needs_pg;
    bool needs_redis;
    /* Starts the role: listeners, routes, watchers. *state is the role's own data.
     * Returns CHORUS_OK or CHORUS_ERR (the process then exits non-zero); on CHORUS_ERR
     * whatever it left in *state is still handed to free(). */
    int (*start)(app *a, void **state);
    /* The first step of a graceful stop (SIGTERM), for roles whose clients must be
     * handed over before anything else goes (WSS sessions): stop taking new ones and
     * let the current ones go. The app then polls drained() until it is true for every
     * such role, or half of shutdown_timeout_ms passed, and only then calls stop.
     * Both may be NULL. */
    void (*drain)(void *state);
    bool (*drained)(void *state);
    /* Begins a graceful stop (SIGTERM): stop accepting work, drain, then let go of
     * every watcher so the loop can end. May be NULL. */
    void (*stop)(void *state);
    /* Frees the role's data after the loop has ended. May be NULL. */
    void (*free)(void *state);
} role_def;

/* The entry point of every Chorus binary. roles is the table of roles this binary was
 * built with; fixed_roles, when not NULL, is the --roles value it always runs (the
 * single-role binaries). Handles the subcommands run, migrate, seed-demo, help and
 * version. Returns the process exit status. */
int app_main(int argc, char **argv, const role_def *const *roles, int nroles,
             const char *fixed_roles);

struct ev_loop *app_loop(app *a);
const chorus_config *app_config(app *a);
/* The shared main Postgres pool / Redis client; NULL when no running role needs it. */
pgpool *app_pg(app *a);
rclient *app_redis(app *a);
/* The HTTP listener on this port, created on first use with the admin routes
 * (/metrics, /healthz, /readyz) mounted. NULL if the port cannot be bound. */
httpd *app_http(app *a, int port);
/* After a write committed outbox rows: wakes the outbox workers' idle lanes (knock.h).
 * Nothing happens in a process without the shared Redis client. */
void app_outbox_knock(app *a);
/* This process' id (config node_id, or host-pid). */
const char *app_node_id(app *a);

#endif
