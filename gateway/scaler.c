/* scaler.c - the `scaler` role: WSS replicas that follow the connection count (the
 * WebSocket-connection gate of DESIGN.md).
 *
 * Every 500 ms it reads the node registry (lib/wssreg.c) and decides, logging each
 * decision with the figures behind it:
 *   - fewer live replicas than wss_replicas_min: start one (a replica of ours that left
 *     the registry while its process runs still counts for 10 s);
 *   - the live nodes' connections over scale_up_load % of their capacity: start one
 *     (locally, `chorus run --roles wss` on the next free port from wss_port), up to
 *     wss_replicas_max, one at a time (the next waits until the last has registered);
 *   - under scale_down_load % for scale_down_after_s, and the rest would stay under
 *     scale_up_load without it: retire the replica it started with the fewest sessions
 *     (SIGTERM: it drains, its clients reconnect elsewhere and resume). The gap between
 *     the two marks and the wait are the hysteresis: it never flaps.
 *   - nodes over the average by more than 5 % are asked to shed the excess
 *     (chorus:wss:shed:<node>), and every node over it while one is more than 5 %
 *     under it: those clients reconnect through /realtime/connect to
 *     the emptiest nodes, so a new replica takes its share at once. Not while the
 *     connections grow by more than 1 % of capacity in 3 s: new ones go to the
 *     emptiest nodes anyway.
 * It decides nothing from a view of the registry older than 3 s (Redis not answering).
 * Replicas die with the scaler (PR_SET_PDEATHSIG): the local deployment has one owner.
 * On Kubernetes the HorizontalPodAutoscaler does this job instead (deploy/k8s).
 */
#include "gateway.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "chorus/log.h"
#include "chorus/metrics.h"
#include "chorus/status.h"
#include "chorus/wssreg.h"

#define TICK_S 0.5
#define REGISTER_WAIT_S 10.0
#define SILENT_GRACE_S 10.0
#define TRUST_MS 3000
#define SHED_EVERY_S 3.0
#define MAX_REPLICAS 1000

typedef struct replica {
    pid_t pid;
    int port;
    char id[WSSREG_ID_MAX];
    double started;
    bool retiring;
    bool was_live;        /* seen live in the registry at least once */
    double silent_since;  /* view time (ms) it was first seen not live since; 0: live */
    ev_child child;
    struct scaler *sc;
} replica;

typedef struct scaler {
    app *app;
    const chorus_config *cfg;
    wssreg *reg;
    ev_timer tick;
    replica *reps[MAX_REPLICAS];
    int nreps;
    int next_port, next_index;
    double low_since;      /* when the load went under the low mark (0: it is not) */
    double last_shed;
    long growth_conns;     /* connections at growth_at: is the fleet filling up? */
    double growth_at;
    bool growing;
    bool untrusted;        /* the last tick found the registry's view too old */
    bool stopping;
    metrics_series *m_up, *m_down, *m_replicas, *m_load, *m_shed;
} scaler;

/* ---- the figures -------------------------------------------------------------------- */

typedef struct figures {
    int live;
    int silent; /* ours, out of the registry for less than SILENT_GRACE_S */
    long conns, cap;
    double load; /* conns / cap, 0 when no capacity */
} figures;

static const wssreg_node *registered(scaler *sc, const char *id)
{
    int n;
    const wssreg_node *nodes = wssreg_nodes(sc->reg, &n);
    for (int i = 0; i < n; i++)
        if (strcmp(nodes[i].id, id) == 0)
            return &nodes[i];
    return NULL;
}

/* Replicas of ours that were live and have left the registry less than SILENT_GRACE_S
 * ago while their process runs. They count towards the minimum: in the 100k load test a
 * host stall of 3 s made every node look gone at once, and the scaler started an eighth
 * replica for "0 live replicas" beside seven working ones. The grace runs in the view's
 * time, which stands still while the registry cannot be read. */
static int silent(scaler *sc)
{
    double read_ms = wssreg_read_ms(sc->reg);
    int count = 0;
    for (int i = 0; i < sc->nreps; i++) {
        replica *r = sc->reps[i];
        const wssreg_node *n = registered(sc, r->id);
        if (n && wssreg_live(sc->reg, n)) {
            r->was_live = true;
            r->silent_since = 0;
            continue;
        }
        if (!r->was_live || r->retiring)
            continue;
        if (!r->silent_since) {
            r->silent_since = read_ms;
            log_warn("scaler: replica %s (pid %d) left the registry: it counts as live for "
                     "%.0f s more", r->id, (int)r->pid, SILENT_GRACE_S);
        }
        if (read_ms - r->silent_since < SILENT_GRACE_S * 1000)
            count++;
    }
    return count;
}

static figures measure(scaler *sc)
{
    figures f = {0};
    int n;
    const wssreg_node *nodes = wssreg_nodes(sc->reg, &n);
    for (int i = 0; i < n; i++) {
        if (!wssreg_live(sc->reg, &nodes[i]))
            continue;
        f.live++;
        f.conns += nodes[i].connections;
        f.cap += nodes[i].capacity;
    }
    f.load = f.cap ? (double)f.conns / (double)f.cap : 0;
    f.silent = silent(sc);
    return f;
}

/* ---- replicas ----------------------------------------------------------------------- */

static void on_child(struct ev_loop *loop, ev_child *w, int revents)
{
    (void)revents;
    replica *r = w->data;
    scaler *sc = r->sc;
    ev_child_stop(loop, w);
    int st = w->rstatus;
    if (r->retiring || sc->stopping)
        log_info("scaler: replica %s (pid %d) ended", r->id, (int)r->pid);
    else
        log_warn("scaler: replica %s (pid %d) died (%s %d): it will be replaced if needed",
                 r->id, (int)r->pid, WIFSIGNALED(st) ? "signal" : "exit",
                 WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    for (int i = 0; i < sc->nreps; i++)
        if (sc->reps[i] == r) {
            sc->reps[i] = sc->reps[--sc->nreps];
            break;
        }
    metrics_set(sc->m_replicas, sc->nreps);
    free(r);
}

/* In the child: a replica of this binary with the wss role only, on its own port. */
static void exec_replica(const replica *r)
{
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    char port[16];
    snprintf(port, sizeof port, "%d", r->port);
    setenv("CHORUS_WSS_PORT", port, 1);
    setenv("CHORUS_NODE_ID", r->id, 1);
    unsetenv("CHORUS_ADMIN_PORT"); /* the node serves /metrics on its own port */
    char *argv[] = {"chorus", "run", "--roles", "wss", NULL};
    execv("/proc/self/exe", argv);
    _exit(127);
}

static bool start_replica(scaler *sc, const char *why)
{
    replica *r = calloc(1, sizeof *r);
    if (!r || sc->nreps == MAX_REPLICAS) {
        free(r);
        return false;
    }
    r->sc = sc;
    r->port = sc->next_port++;
    snprintf(r->id, sizeof r->id, "%s-wss-%d", app_node_id(sc->app), ++sc->next_index);
    r->started = ev_now(app_loop(sc->app));
    r->pid = fork();
    if (r->pid == 0)
        exec_replica(r);
    if (r->pid < 0) {
        log_error("scaler: fork: %s", strerror(errno));
        free(r);
        return false;
    }
    ev_child_init(&r->child, on_child, r->pid, 0);
    r->child.data = r;
    ev_child_start(app_loop(sc->app), &r->child);
    sc->reps[sc->nreps++] = r;
    metrics_set(sc->m_replicas, sc->nreps);
    log_info("scaler: starting replica %s on port %d (pid %d): %s", r->id, r->port,
             (int)r->pid, why);
    return true;
}

/* A replica started but not yet in the registry: the next decision waits for it. */
static bool starting(scaler *sc, double now)
{
    for (int i = 0; i < sc->nreps; i++) {
        replica *r = sc->reps[i];
        if (!r->retiring && !registered(sc, r->id) && now - r->started < REGISTER_WAIT_S)
            return true;
    }
    return false;
}

static bool retiring(scaler *sc)
{
    for (int i = 0; i < sc->nreps; i++)
        if (sc->reps[i]->retiring)
            return true;
    return false;
}

/* ---- decisions ---------------------------------------------------------------------- */

static void scale_up(scaler *sc, figures f)
{
    char why[160];
    if (f.live < sc->cfg->wss_replicas_min)
        snprintf(why, sizeof why, "%d live replicas, the minimum is %d", f.live,
                 sc->cfg->wss_replicas_min);
    else
        snprintf(why, sizeof why, "load %.0f%% (%ld of %ld connections) over %d%%",
                 f.load * 100, f.conns, f.cap, sc->cfg->scale_up_load);
    if (start_replica(sc, why))
        metrics_inc(sc->m_up);
}

/* The replica of ours with the fewest sessions, if the others can carry them. */
static void scale_down(scaler *sc, figures f)
{
    replica *pick = NULL;
    const wssreg_node *pn = NULL;
    for (int i = 0; i < sc->nreps; i++) {
        const wssreg_node *n = registered(sc, sc->reps[i]->id);
        if (n && wssreg_live(sc->reg, n) && (!pn || n->connections < pn->connections)) {
            pick = sc->reps[i];
            pn = n;
        }
    }
    if (!pick)
        return;
    double after = f.cap > pn->capacity ? (double)f.conns / (double)(f.cap - pn->capacity) : 1;
    if (after * 100 >= sc->cfg->scale_up_load)
        return; /* the rest would be over the high mark: it would only come back */
    log_info("scaler: retiring replica %s (%ld sessions): load %.0f%% (%ld of %ld) under %d%% "
             "for %d s; the others would be at %.0f%%",
             pick->id, pn->connections, f.load * 100, f.conns, f.cap, sc->cfg->scale_down_load,
             sc->cfg->scale_down_after_s, after * 100);
    pick->retiring = true;
    kill(pick->pid, SIGTERM);
    metrics_inc(sc->m_down);
    sc->low_since = 0;
}

/* Whether connections rose by more than 1 % of capacity over the last SHED_EVERY_S.
 * While they do, the gateway sends every new one to the emptiest node, which evens the
 * load without moving anybody: in the 100k load test, shedding during the ramp made
 * 16,487 sessions reconnect and resume, load the ramp itself had to wait behind. */
static void note_growth(scaler *sc, figures f, double now)
{
    if (now - sc->growth_at < SHED_EVERY_S)
        return;
    sc->growing = f.conns - sc->growth_conns > f.cap / 100;
    sc->growth_conns = f.conns;
    sc->growth_at = now;
}

/* What one node gives up: its sessions over the average, when it is more than 5 % over
 * it, or when it is over it at all and some node is more than 5 % under it. Without the
 * second rule a fleet could stay uneven for good: seven nodes at 127..151 sessions (the
 * average 143), none over 151, the one at 127 never filled (test_scaling saw it). */
static long excess_of(long conns, double avg, bool starved)
{
    if (conns < 0 || (conns <= avg * 1.05 + 1 && !starved))
        return 0;
    long excess = conns - (long)ceil(avg);
    return excess > 0 ? excess : 0;
}

/* The moves of a round are capped at budget, shared in proportion to each node's
 * excess; the moved clients reconnect to the emptiest nodes. */
void scaler_moves(const long *conns, int n, double budget, long *moves)
{
    long total = 0, sum = 0;
    int live = 0;
    for (int i = 0; i < n; i++)
        if (conns[i] >= 0) {
            sum += conns[i];
            live++;
        }
    double avg = live ? (double)sum / live : 0;
    bool starved = false;
    for (int i = 0; i < n; i++)
        starved |= conns[i] >= 0 && conns[i] < avg * 0.95 - 1;
    for (int i = 0; i < n; i++)
        total += excess_of(conns[i], avg, starved);
    double share = total > budget ? budget / (double)total : 1.0;
    for (int i = 0; i < n; i++)
        moves[i] = (long)ceil((double)excess_of(conns[i], avg, starved) * share);
}

/* Moved clients reconnect and resume, so a round moves at most rebalance_per_s times
 * its period: in the 100k load test eight nodes shedding 100 a second each made 800
 * reconnects a second on a machine already busy with 50,000 deliveries a second, and
 * the deliveries' p99 went from about 0.2 s to 1-2 s while they lasted. */
static void rebalance(scaler *sc, figures f, double now)
{
    if (f.live < 2 || sc->growing || now - sc->last_shed < SHED_EVERY_S ||
        sc->cfg->rebalance_per_s <= 0)
        return;
    int n;
    const wssreg_node *nodes = wssreg_nodes(sc->reg, &n);
    long conns[WSSREG_MAX_NODES], moves[WSSREG_MAX_NODES];
    n = n < WSSREG_MAX_NODES ? n : WSSREG_MAX_NODES;
    for (int i = 0; i < n; i++)
        conns[i] = wssreg_live(sc->reg, &nodes[i]) ? nodes[i].connections : -1;
    scaler_moves(conns, n, sc->cfg->rebalance_per_s * SHED_EVERY_S, moves);
    double avg = (double)f.conns / f.live;
    rclient *r = app_redis(sc->app);
    for (int i = 0; r && i < n; i++) {
        if (moves[i] <= 0)
            continue;
        log_info("scaler: node %s sheds %ld of %ld sessions (the average is %.1f of %d"
                 " nodes)", nodes[i].id, moves[i], conns[i], avg, f.live);
        rclient_command(r, NULL, NULL, "SET chorus:wss:shed:%s %ld PX 5000", nodes[i].id,
                        moves[i]);
        metrics_add(sc->m_shed, (double)moves[i]);
        sc->last_shed = now;
    }
}

/* No decision from a view older than TRUST_MS: figures that could not be read are not
 * figures of a fleet that shrank. */
static bool trusted(scaler *sc, double now)
{
    bool ok = wssreg_trusted(sc->reg, now * 1000);
    if (!ok && !sc->untrusted)
        log_warn("scaler: the registry was last read %.1f s ago: no decisions until it is "
                 "read again", now - wssreg_read_ms(sc->reg) / 1000);
    else if (ok && sc->untrusted)
        log_info("scaler: the registry is read again");
    sc->untrusted = !ok;
    return ok;
}

static void on_tick(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    scaler *sc = t->data;
    if (sc->stopping || !wssreg_ready(sc->reg))
        return;
    double now = ev_now(loop);
    if (!trusted(sc, now))
        return;
    figures f = measure(sc);
    metrics_set(sc->m_load, f.load);
    note_growth(sc, f, now);
    if (starting(sc, now) || retiring(sc))
        return;
    bool high = f.cap && f.load * 100 > sc->cfg->scale_up_load;
    if (f.live + f.silent < sc->cfg->wss_replicas_min ||
        (high && sc->nreps < sc->cfg->wss_replicas_max)) {
        scale_up(sc, f);
        return;
    }
    bool low = f.load * 100 < sc->cfg->scale_down_load && sc->nreps > sc->cfg->wss_replicas_min;
    sc->low_since = !low ? 0 : sc->low_since ? sc->low_since : now;
    if (low && now - sc->low_since >= sc->cfg->scale_down_after_s)
        scale_down(sc, f);
    else
        rebalance(sc, f, now);
}

/* ---- the role ----------------------------------------------------------------------- */

static int scaler_start(app *a, void **state)
{
    scaler *sc = calloc(1, sizeof *sc);
    if (!sc)
        return CHORUS_ERR;
    *state = sc;
    sc->app = a;
    sc->cfg = app_config(a);
    sc->next_port = sc->cfg->wss_port;
    sc->reg = wssreg_new(app_loop(a), app_redis(a), 250, TRUST_MS);
    if (!sc->reg)
        return CHORUS_ERR;
    metrics_family *d = metrics_family_new(METRICS_COUNTER, "chorus_scaler_decisions_total",
                                           "replicas started (up) and retired (down)",
                                           "action", NULL, 0);
    sc->m_up = metrics_with1(d, "up");
    sc->m_down = metrics_with1(d, "down");
    sc->m_replicas = metrics_gauge("chorus_scaler_replicas", "WSS replicas this scaler runs");
    sc->m_load = metrics_gauge("chorus_scaler_load",
                               "live WSS nodes' connections over their capacity (0-1)");
    sc->m_shed = metrics_counter("chorus_scaler_shed_sessions_total",
                                 "sessions nodes were asked to move, to even the load");
    ev_timer_init(&sc->tick, on_tick, TICK_S, TICK_S);
    sc->tick.data = sc;
    ev_timer_start(app_loop(a), &sc->tick);
    log_info("scaler: WSS replicas %d..%d from port %d; up over %d%%, down under %d%% for %d s",
             sc->cfg->wss_replicas_min, sc->cfg->wss_replicas_max, sc->cfg->wss_port,
             sc->cfg->scale_up_load, sc->cfg->scale_down_load, sc->cfg->scale_down_after_s);
    return CHORUS_OK;
}

/* SIGTERM: the replicas drain first; the scaler's stop waits for them (bounded). */
static void scaler_drain(void *state)
{
    scaler *sc = state;
    sc->stopping = true;
    for (int i = 0; i < sc->nreps; i++)
        kill(sc->reps[i]->pid, SIGTERM);
}

static bool scaler_drained(void *state)
{
    return ((scaler *)state)->nreps == 0;
}

static void scaler_stop(void *state)
{
    scaler *sc = state;
    sc->stopping = true;
    ev_timer_stop(app_loop(sc->app), &sc->tick);
    for (int i = 0; i < sc->nreps; i++) { /* still there after the drain: no waiting */
        kill(sc->reps[i]->pid, SIGKILL);
        ev_child_stop(app_loop(sc->app), &sc->reps[i]->child);
        waitpid(sc->reps[i]->pid, NULL, 0);
        free(sc->reps[i]);
    }
    sc->nreps = 0;
    wssreg_free(sc->reg);
    sc->reg = NULL;
}

static void scaler_free(void *state)
{
    scaler *sc = state;
    if (!sc)
        return;
    wssreg_free(sc->reg);
    free(sc);
}

const role_def scaler_role = {
    .name = "scaler",
    .needs_pg = false,
    .needs_redis = true,
    .start = scaler_start,
    .drain = scaler_drain,
    .drained = scaler_drained,
    .stop = scaler_stop,
    .free = scaler_free,
};
