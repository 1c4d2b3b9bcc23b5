/* load_report.c - the end of a run: the summary on stdout and the JSON report (--report),
 * the same figures in both. Memory is given as "first -> peak": the servers' state when
 * the run began against the worst it reached.
 */
#include <math.h>
#include <stdio.h>

#include "load.h"

#define MIB 1048576.0

/* Every post reaches each member of its channel that holds a session (seed-load
 * channels have the same number of members; only sessions held count). */
static uint64_t expected(const scenario *sc, const population *p, const stats *a)
{
    double share = (double)sc->connections / p->nusers;
    return (uint64_t)((double)a->posted * p->channels[0].members * share + 0.5);
}

static unsigned long long ull(uint64_t v)
{
    return (unsigned long long)v;
}

/* ---- the summary ---------------------------------------------------------------------- */

/* The posts the scenario asks for: the publishers post on a schedule of rate a second
 * for duration seconds. A publisher that falls behind (a POST slower than its share of
 * the rate allows) posts fewer, so the load offered was less than the scenario's. */
static uint64_t posts_asked(const scenario *sc)
{
    return (uint64_t)llround(sc->rate * sc->duration);
}

static void print_clients(const scenario *sc, const population *p, const stats *a, double secs,
                          uint64_t peak)
{
    const hist *l = &a->latency, *c = &a->connect_ms;
    printf("\n== chorus-load: %d %s sessions asked, %llu held at the end (peak %llu)\n",
           sc->connections, sc->msgpack ? "msgpack" : "json", ull(a->connected), ull(peak));
    printf("connect     p50 %.1f ms  p99 %.1f ms  max %.1f ms; failed: %llu connect, %llu "
           "upgrade; closed by nodes %llu\n",
           hist_quantile(c, .5) / 1e3, hist_quantile(c, .99) / 1e3, c->max_us / 1e3,
           ull(a->failed_connect), ull(a->failed_upgrade), ull(a->closed));
    if (a->failed_connect)
        printf("            failed connects: %llu answered 503 (no node had room), %llu another "
               "status, %llu no answer from the gateway, %llu node not reachable\n",
               ull(a->fail_503), ull(a->fail_status), ull(a->fail_no_answer), ull(a->fail_node));
    printf("resume      %llu deliberate disconnects, %llu resumed; %llu resumed after node "
           "closes; %llu events replayed\n",
           ull(a->dropped), ull(a->resumed_drops), ull(a->resumed_closes), ull(a->replayed));
    uint64_t asked = posts_asked(sc);
    printf("messages    %llu posted of %llu asked (%llu errors); %llu deliveries of %llu due, "
           "in %.0f s\n",
           ull(a->posted), ull(asked), ull(a->post_errors), ull(a->deliveries),
           ull(expected(sc, p, a)), secs);
    if ((double)a->posted < 0.95 * (double)asked)
        printf("            the publishers fell behind: %.0f messages/s of %.0f (each posts one "
               "at a time; more with --publishers)\n",
               (double)a->posted / sc->duration, sc->rate);
    printf("latency     p50 %.1f  p95 %.1f  p99 %.1f  max %.1f ms\n", hist_quantile(l, .5) / 1e3,
           hist_quantile(l, .95) / 1e3, hist_quantile(l, .99) / 1e3, l->max_us / 1e3);
    printf("order       lost %llu, duplicate %llu, out of order %llu; missing at the end %llu\n",
           ull(a->lost), ull(a->duplicate), ull(a->out_of_order), ull(a->missing));
}

static void print_host(const servers *sv, const series *se)
{
    if (sv->host.syscall_ns > 0 && sv->host.wakeup_us > 0)
        printf("kernel      a system call %.0f ns, a round trip to another process %.1f us "
               "(before the load)\n",
               sv->host.syscall_ns, sv->host.wakeup_us);
    host_summary h = host_summarize(se->rows, se->n);
    if (h.seconds == 0)
        return;
    printf("host        %d CPUs busy %.0f %% (median of the %d s %s; %.0f %% at most), "
           "stolen %.1f %% (%.1f %% at most)\n",
           sv->host.cpus, h.busy_median, h.seconds,
           h.with_deliveries ? "with deliveries" : "sampled", h.busy_max, h.steal_median,
           h.steal_max);
}

static void print_servers(const servers *sv)
{
    for (int j = 0; j < sv->nnodes; j++) {
        const node_sample *n = &sv->nodes[j];
        printf("node :%-6d RSS %.1f -> %.1f MiB for %.0f -> %.0f sessions: %.1f KiB a session",
               n->port, n->rss.first / MIB, n->rss.peak / MIB, n->sessions.first,
               n->sessions.peak, node_kib_per_session(n));
        if (node_lag_ms(n) >= 0)
            printf("; loop %.1f ms late on average, %.1f %% of ticks over 100 ms", node_lag_ms(n),
                   100 * node_lag_slow_share(n));
        printf("\n");
    }
    const gateway_sample *g = &sv->gw;
    if (g->rss.seen)
        printf("gateway     RSS %.1f -> %.1f MiB (:%d, a process of roles %s)\n",
               g->rss.first / MIB, g->rss.peak / MIB, g->port, g->roles);
    for (int i = 0; i < g->nroutes; i++) {
        route_counts d = route_delta(&g->routes[i]);
        if (d.requests > 0)
            printf("  %-46s %6.0f requests, %.0f 5xx, mean %.1f ms, p99 %.1f ms\n",
                   g->routes[i].route, d.requests, d.errors, d.sum / d.requests * 1e3,
                   route_quantile_ms(&g->routes[i], .99));
    }
    const pg_sample *pg = &sv->pg;
    if (pg->rss.seen) {
        printf("postgres    RSS %.1f -> %.1f MiB in %d processes", pg->rss.first / MIB,
               pg->rss.peak / MIB, pg->processes);
        if (pg->pss.seen)
            printf("; PSS %.1f -> %.1f MiB (shared memory once)", pg->pss.first / MIB,
                   pg->pss.peak / MIB);
        printf("\n");
    }
    const redis_sample *r = &sv->redis;
    if (r->used.seen)
        printf("redis       used_memory %.1f -> %.1f MiB, RSS %.1f -> %.1f MiB (:%d)\n",
               r->used.first / MIB, r->used.peak / MIB, r->rss.first / MIB, r->rss.peak / MIB,
               r->port);
}

/* ---- the JSON report ------------------------------------------------------------------ */

static json_t *hist_json(const hist *h, bool p95)
{
    json_t *o = json_pack("{s:f,s:f,s:f}", "p50", hist_quantile(h, .5) / 1e3, "p99",
                          hist_quantile(h, .99) / 1e3, "max", h->max_us / 1e3);
    if (p95)
        json_object_set_new(o, "p95", json_real(hist_quantile(h, .95) / 1e3));
    return o;
}

static json_t *gauge_json(const gauge *g)
{
    return json_pack("{s:f,s:f,s:f}", "first", g->first, "peak", g->peak, "last", g->now);
}

static json_t *nodes_json(const servers *sv)
{
    json_t *a = json_array();
    for (int j = 0; j < sv->nnodes; j++) {
        const node_sample *n = &sv->nodes[j];
        json_array_append_new(
            a, json_pack("{s:i,s:f,s:f,s:f,s:f,s:f,s:f,s:f}", "port", n->port, "rss_first",
                         n->rss.first, "rss_peak", n->rss.peak, "sessions_first",
                         n->sessions.first, "sessions_peak", n->sessions.peak,
                         "kib_per_session", node_kib_per_session(n), "loop_lag_mean_ms",
                         node_lag_ms(n), "loop_ticks_late_share", node_lag_slow_share(n)));
    }
    return a;
}

static json_t *gateway_json(const gateway_sample *g)
{
    if (!g->rss.seen)
        return json_null();
    json_t *routes = json_array();
    for (int i = 0; i < g->nroutes; i++) {
        route_counts d = route_delta(&g->routes[i]);
        if (d.requests > 0)
            json_array_append_new(
                routes, json_pack("{s:s,s:f,s:f,s:f,s:f,s:f}", "route", g->routes[i].route,
                                  "requests", d.requests, "errors_5xx", d.errors, "mean_ms",
                                  d.sum / d.requests * 1e3, "p95_ms",
                                  route_quantile_ms(&g->routes[i], .95), "p99_ms",
                                  route_quantile_ms(&g->routes[i], .99)));
    }
    return json_pack("{s:i,s:s,s:o,s:o}", "port", g->port, "roles", g->roles, "rss_bytes",
                     gauge_json(&g->rss), "routes", routes);
}

static json_t *stores_json(const servers *sv)
{
    const pg_sample *pg = &sv->pg;
    const redis_sample *r = &sv->redis;
    json_t *pgj = pg->rss.seen ? json_pack("{s:i,s:o,s:o}", "processes", pg->processes,
                                           "rss_bytes", gauge_json(&pg->rss), "pss_bytes",
                                           pg->pss.seen ? gauge_json(&pg->pss) : json_null())
                               : json_null();
    json_t *rj = r->used.seen ? json_pack("{s:i,s:o,s:o}", "port", r->port, "used_memory_bytes",
                                          gauge_json(&r->used), "rss_bytes", gauge_json(&r->rss))
                              : json_null();
    return json_pack("{s:o,s:o}", "postgres", pgj, "redis", rj);
}

static json_t *host_json(const servers *sv, const series *se)
{
    host_summary h = host_summarize(se->rows, se->n);
    json_t *j = h.seconds == 0
                    ? json_object()
                    : json_pack("{s:i,s:i,s:b,s:f,s:f,s:f,s:f}", "cpus", sv->host.cpus,
                                "seconds", h.seconds, "with_deliveries", h.with_deliveries,
                                "busy_pct_median", h.busy_median, "busy_pct_max", h.busy_max,
                                "steal_pct_median", h.steal_median, "steal_pct_max",
                                h.steal_max);
    if (j && sv->host.syscall_ns > 0 && sv->host.wakeup_us > 0) {
        json_object_set_new(j, "syscall_ns", json_real(sv->host.syscall_ns));
        json_object_set_new(j, "wakeup_us", json_real(sv->host.wakeup_us));
    }
    return j ? j : json_null();
}

static int write_json(const scenario *sc, const population *p, const stats *a, double secs,
                      uint64_t peak, const servers *sv, const series *se)
{
    json_t *j = json_pack(
        "{s:i,s:s,s:f,s:I,s:I,s:I,s:I,s:I,s:o,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:o,"
        "s:I,s:I,s:I,s:I,s:o,s:o}",
        "sessions_asked", sc->connections, "protocol", sc->msgpack ? "msgpack" : "json",
        "resume_share", sc->resume_share, "sessions_held", (json_int_t)a->connected,
        "sessions_peak", (json_int_t)peak, "failed_connect", (json_int_t)a->failed_connect,
        "failed_upgrade", (json_int_t)a->failed_upgrade, "closed_by_nodes",
        (json_int_t)a->closed, "connect_ms", hist_json(&a->connect_ms, false),
        "deliberate_disconnects", (json_int_t)a->dropped, "resumes_after_disconnect",
        (json_int_t)a->resumed_drops, "resumes_after_close", (json_int_t)a->resumed_closes,
        "replayed", (json_int_t)a->replayed, "posted", (json_int_t)a->posted, "posts_asked",
        (json_int_t)posts_asked(sc), "post_errors",
        (json_int_t)a->post_errors, "deliveries", (json_int_t)a->deliveries, "deliveries_due",
        (json_int_t)expected(sc, p, a), "seconds", secs, "latency_ms",
        hist_json(&a->latency, true), "lost", (json_int_t)a->lost, "duplicate",
        (json_int_t)a->duplicate, "out_of_order", (json_int_t)a->out_of_order,
        "missing_at_end", (json_int_t)a->missing, "nodes",
        nodes_json(sv), "gateway", gateway_json(&sv->gw));
    if (!j)
        return -1;
    json_object_set_new(j, "failed_connect_by_cause",
                        json_pack("{s:I,s:I,s:I,s:I}", "503", (json_int_t)a->fail_503,
                                  "other_status", (json_int_t)a->fail_status, "no_answer",
                                  (json_int_t)a->fail_no_answer, "node_unreachable",
                                  (json_int_t)a->fail_node));
    json_object_update_new(j, stores_json(sv));
    json_object_set_new(j, "host", host_json(sv, se));
    json_object_set_new(j, "series", series_json(se));
    int rc = json_dump_file(j, sc->report, JSON_COMPACT);
    json_decref(j);
    return rc;
}

void report_write(const scenario *sc, const population *p, const stats *all, double secs,
                  uint64_t peak, const servers *sv, const series *se)
{
    print_clients(sc, p, all, secs, peak);
    print_servers(sv);
    print_host(sv, se);
    fflush(stdout);
    if (sc->report && write_json(sc, p, all, secs, peak, sv, se) != 0)
        fprintf(stderr, "chorus-load: could not write the report %s\n", sc->report);
}
