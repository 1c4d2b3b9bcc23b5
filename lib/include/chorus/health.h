/* health.h - readiness checks of a process.
 *
 * Each dependency (Postgres pool, Redis client, ...) registers a probe; /readyz is 200
 * when every probe says ready, else 503 with the names of those that are not.
 * /healthz only says the loop is alive.
 */
#ifndef CHORUS_HEALTH_H
#define CHORUS_HEALTH_H

#include <stdbool.h>

#include "chorus/buf.h"

typedef bool (*health_probe_fn)(void *arg);

/* Registers a named probe (name copied). At most 16 probes. Returns CHORUS_OK/ERR. */
int health_register(const char *name, health_probe_fn fn, void *arg);

/* Removes the probes registered with this arg (when a client is freed). */
void health_unregister(void *arg);

/* Runs every probe; writes a JSON object {"ready":bool,"checks":{"name":bool,...}}.
 * Returns true when all are ready. */
bool health_ready(buf *json_out);

void health_reset(void);

#endif
