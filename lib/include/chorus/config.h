/* config.h - the one configuration mechanism of every Chorus role.
 *
 * Every key has a default, an environment variable CHORUS_<KEY> and a flag --<key>
 * (--key=value or --key value). Flags override the environment, which overrides the
 * default; DATABASE_URL and REDIS_URL are accepted as aliases. The configuration is
 * loaded and validated once at start and is read-only after that.
 */
#ifndef CHORUS_CONFIG_H
#define CHORUS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

typedef struct chorus_config {
    char *roles;           /* comma-separated subset of gateway,wss,outbox,indexer */
    char *database_url;    /* libpq connection URI */
    char *redis_url;       /* redis://host:port[/db]; host must be an IP address */
    int partitions;        /* stream partitions; every process must agree */
    char *bind;            /* listen address for every port of the process */
    char *public_host;     /* host name put into URLs handed to clients */
    int gateway_port;
    int wss_port;
    int admin_port;        /* extra /metrics,/healthz,/readyz listener; 0 = none */
    char *node_id;         /* this process' id in registries; "" = host-pid */
    char *jwt_secret;      /* HS256 key, at least 32 bytes, required by gateway and wss */
    int jwt_ttl_s;
    int pg_pool_size;
    int pg_queue_max;      /* queries waiting for a connection before CHORUS_AGAIN */
    int pg_connect_timeout_ms;
    int redis_max_pending; /* commands in flight per Redis client before CHORUS_AGAIN */
    int stream_maxlen;     /* approximate MAXLEN of each partition stream */
    int outbox_batch;      /* rows per outbox batch at most */
    int outbox_lanes;      /* concurrent batches per outbox worker */
    int outbox_poll_max_ms;
    int outbox_lease_ms;   /* worker lease; renewed every third of it */
    int outbox_retention_s;
    int wss_queue_bytes;   /* outbound bytes per WebSocket session before 4008 */
    int wss_heartbeat_ms;  /* told in hello; a session silent for twice it is closed */
    int wss_recent_events; /* per channel, for resume from memory */
    int wss_recent_bytes;  /* all channels' recent events on one node */
    int wss_read_gap_ms;   /* stream reader's pause after a read with events */
    int stream_sweep_ms;   /* doorbell readers' full read period; 0 = no doorbell */
    int max_body_bytes;    /* request bodies past this get 413 */
    int rate_limit_per_s;  /* writes per second per user (token refill); 0 = no limit */
    int rate_limit_burst;  /* writes a user may make at once (bucket size) */
    int workers;           /* threads for CPU-heavy work (password hashing) */
    int max_connections;   /* wss sessions before 4009; 0 = from the open-files limit */
    int wss_replicas_min;  /* scaler: replicas kept at least */
    int wss_replicas_max;  /* scaler: replicas started at most */
    int scale_up_load;     /* scaler: % of capacity that starts a replica */
    int scale_down_load;   /* scaler: % under which, for scale_down_after_s, one retires */
    int scale_down_after_s;
    int rebalance_per_s;   /* scaler: sessions a second moved at most to even the load */
    int shutdown_timeout_ms;
    char *log_level;       /* debug, info, warn, error */
    char *log_format;      /* text or json */
} chorus_config;

/* Fills cfg from defaults, the environment and argv (flags only; a non-flag argument
 * is an error). Strings in cfg are heap copies owned by cfg. Returns CHORUS_OK, or
 * CHORUS_ERR with a message in err. "--help" is not handled here: see config_help. */
int config_load(chorus_config *cfg, int argc, char **argv, char *err, size_t errlen);

/* Checks ranges and cross-key rules (for example a JWT secret when gateway or wss
 * runs). Returns CHORUS_OK, or CHORUS_ERR with a message in err. */
int config_validate(const chorus_config *cfg, char *err, size_t errlen);

/* Writes every key with its flag, environment variable, default and meaning. */
void config_help(FILE *out);

/* True when roles (comma-separated) names this role. */
bool config_has_role(const chorus_config *cfg, const char *role);

/* Frees the strings of cfg. */
void config_free(chorus_config *cfg);

#endif
