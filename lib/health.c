/* health.c - readiness probes of a process and the /readyz body. */
#include "chorus/health.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "chorus/log.h"
#include "chorus/status.h"

#define HEALTH_MAX_PROBES 16

typedef struct health_probe {
    char *name;
    health_probe_fn fn;
    void *arg;
} health_probe;

static health_probe probes[HEALTH_MAX_PROBES];
static int nprobes;

int health_register(const char *name, health_probe_fn fn, void *arg)
{
    if (!name || !*name || !fn) {
        log_error("health: probe without name or function");
        return CHORUS_ERR;
    }
    if (nprobes == HEALTH_MAX_PROBES) {
        log_error("health: more than %d probes (%s)", HEALTH_MAX_PROBES, name);
        return CHORUS_ERR;
    }
    char *copy = strdup(name);
    if (!copy)
        return CHORUS_ERR;
    probes[nprobes++] = (health_probe){copy, fn, arg};
    return CHORUS_OK;
}

void health_unregister(void *arg)
{
    int kept = 0;
    for (int i = 0; i < nprobes; i++) {
        if (probes[i].arg == arg)
            free(probes[i].name);
        else
            probes[kept++] = probes[i];
    }
    nprobes = kept;
}

/* Probes sharing a name (two Redis clients, say) report as one check that is ready
 * only when all of them are: a JSON object cannot hold the name twice. */
static void checks_add(json_t *checks, const char *name, bool ok)
{
    json_t *old = json_object_get(checks, name);
    if (old && !json_is_true(old))
        return;
    json_object_set_new(checks, name, json_boolean(ok));
}

static void write_json(buf *out, bool ready, json_t *checks)
{
    json_t *root = json_pack("{s:b,s:O}", "ready", ready, "checks", checks);
    char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
    /* Out of memory: a fixed body still tells the truth about readiness. */
    buf_puts(out, text ? text : ready ? "{\"ready\":true}" : "{\"ready\":false}");
    free(text);
    json_decref(root);
}

bool health_ready(buf *json_out)
{
    json_t *checks = json_object();
    bool ready = true;
    for (int i = 0; i < nprobes; i++) {
        bool ok = probes[i].fn(probes[i].arg);
        ready = ready && ok;
        if (checks)
            checks_add(checks, probes[i].name, ok);
    }
    if (json_out)
        write_json(json_out, ready, checks);
    json_decref(checks);
    return ready;
}

void health_reset(void)
{
    for (int i = 0; i < nprobes; i++)
        free(probes[i].name);
    nprobes = 0;
}
