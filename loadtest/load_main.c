/* load_main.c - chorus-load: the load-test harness (docs/LOADTEST.md).
 *
 *   chorus seed-load 2000 20 100 > pop.tsv
 *   chorus-load --population pop.tsv --gateway 8080 --connections 2000 --ramp 1000 \
 *               --rate 50 --duration 20
 *
 * Forks connection workers (each under the per-process open-files limit, each session
 * on one of --sources loopback addresses) and publishers, prints one progress line a
 * second, and at the end a summary and (--report) a JSON report. Stops by itself at the
 * end of the scenario or at --deadline, and its children with it.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "load.h"

#define MAX_CHILDREN 128
#define MAX_NODES 64

static void usage(void)
{
    fputs("usage: chorus-load --population FILE --gateway PORT [--connections N] [--ramp N/s]\n"
          "                   [--workers N] [--sources N] [--rate MSG/s] [--publishers N]\n"
          "                   [--payload BYTES] [--duration S] [--deadline S] [--report FILE]\n",
          stderr);
}

static int parse(int argc, char **argv, scenario *sc, const char **pop)
{
    static const struct option opts[] = {
        {"population", 1, 0, 'P'}, {"gateway", 1, 0, 'g'},   {"connections", 1, 0, 'c'},
        {"ramp", 1, 0, 'r'},       {"workers", 1, 0, 'w'},   {"sources", 1, 0, 's'},
        {"rate", 1, 0, 'm'},       {"publishers", 1, 0, 'p'}, {"payload", 1, 0, 'b'},
        {"duration", 1, 0, 'd'},   {"deadline", 1, 0, 'D'},  {"report", 1, 0, 'o'},
        {0, 0, 0, 0}};
    *sc = (scenario){.connections = 1000, .workers = 2, .sources = 8, .ramp = 2000,
                     .rate = 50, .publishers = 1, .payload = 64, .duration = 20,
                     .deadline = 300};
    for (int o; (o = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        switch (o) {
        case 'P': *pop = optarg; break;
        case 'g': sc->gateway_port = atoi(optarg); break;
        case 'c': sc->connections = atoi(optarg); break;
        case 'r': sc->ramp = atof(optarg); break;
        case 'w': sc->workers = atoi(optarg); break;
        case 's': sc->sources = atoi(optarg); break;
        case 'm': sc->rate = atof(optarg); break;
        case 'p': sc->publishers = atoi(optarg); break;
        case 'b': sc->payload = atoi(optarg); break;
        case 'd': sc->duration = atof(optarg); break;
        case 'D': sc->deadline = atof(optarg); break;
        case 'o': sc->report = optarg; break;
        default: return -1;
        }
    }
    bool ok = *pop && sc->gateway_port > 0 && sc->connections > 0 && sc->ramp > 0 &&
              sc->workers > 0 && sc->workers + sc->publishers <= MAX_CHILDREN &&
              sc->sources > 0 && sc->sources < 250 && sc->rate > 0 && sc->publishers > 0 &&
              sc->payload >= 0 && sc->payload <= 4000 && sc->duration > 0 && sc->deadline > 0;
    return ok ? 0 : -1;
}

typedef struct child {
    pid_t pid;
    int fd;
    stats last;   /* its cumulative figures */
    bool done;
} child;

static node_sample nodes[MAX_NODES];
static int nnodes;

/* The nodes the workers were sent to, each sampled once a second. */
static void sample_nodes(const child *ch, int n)
{
    for (int i = 0; i < n; i++)
        for (int k = 0; k < ch[i].last.nnode_ports; k++) {
            int port = ch[i].last.node_ports[k], j = 0;
            while (j < nnodes && nodes[j].port != port)
                j++;
            if (j == nnodes && nnodes < MAX_NODES)
                nodes[nnodes++] = (node_sample){.port = port};
        }
    for (int j = 0; j < nnodes; j++)
        sample_node(&nodes[j]);
}

static double nodes_rss_mib(void)
{
    double sum = 0;
    for (int j = 0; j < nnodes; j++)
        sum += nodes[j].rss_bytes;
    return sum / 1048576;
}

static int spawn(child *c, const scenario *sc, const population *p, int index, bool publisher)
{
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    c->pid = fork();
    if (c->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the harness */
        close(fds[0]);
        _exit(publisher ? publisher_run(sc, p, index, fds[1]) : worker_run(sc, p, index, fds[1]));
    }
    close(fds[1]);
    c->fd = fds[0];
    return c->pid > 0 ? 0 : -1;
}

static void sum(stats *all, const child *ch, int n)
{
    memset(all, 0, sizeof *all);
    for (int i = 0; i < n; i++) {
        const stats *s = &ch[i].last;
        all->connected += s->connected;
        all->connecting += s->connecting;
        all->failed_connect += s->failed_connect;
        all->failed_upgrade += s->failed_upgrade;
        all->closed += s->closed;
        all->deliveries += s->deliveries;
        all->lost += s->lost;
        all->duplicate += s->duplicate;
        all->out_of_order += s->out_of_order;
        all->posted += s->posted;
        all->post_errors += s->post_errors;
        hist_merge(&all->connect_ms, &s->connect_ms);
        hist_merge(&all->latency, &s->latency);
    }
}

/* Reads what the children sent; false once they all ended. */
static bool collect(child *ch, int n, int timeout_ms)
{
    struct pollfd pf[MAX_CHILDREN];
    for (int i = 0; i < n; i++)
        pf[i] = (struct pollfd){ch[i].done ? -1 : ch[i].fd, POLLIN, 0};
    poll(pf, (nfds_t)n, timeout_ms);
    bool any = false;
    for (int i = 0; i < n; i++) {
        if (pf[i].revents) {
            stats s;
            size_t got = 0;
            while (got < sizeof s) {
                ssize_t r = read(ch[i].fd, (char *)&s + got, sizeof s - got);
                if (r <= 0)
                    break;
                got += (size_t)r;
            }
            if (got == sizeof s)
                ch[i].last = s;
            else
                ch[i].done = true;
        }
        any |= !ch[i].done;
    }
    return any;
}

static void progress(double t, const stats *a, uint64_t prev_deliveries)
{
    printf("t=%5.0fs  sessions %8llu (+%llu connecting, %llu failed)  posted %7llu  "
           "deliveries/s %8llu  p99 %6.1f ms  lost %llu  dup %llu  ooo %llu  "
           "WSS RSS %.0f MiB on %d\n",
           t, (unsigned long long)a->connected, (unsigned long long)a->connecting,
           (unsigned long long)(a->failed_connect + a->failed_upgrade),
           (unsigned long long)a->posted, (unsigned long long)(a->deliveries - prev_deliveries),
           (double)hist_quantile(&a->latency, 0.99) / 1000, (unsigned long long)a->lost,
           (unsigned long long)a->duplicate, (unsigned long long)a->out_of_order,
           nodes_rss_mib(), nnodes);
    fflush(stdout);
}

/* Every post reaches each member of its channel that holds a session (seed-load
 * channels have the same number of members; only sessions held count). */
static uint64_t expected(const scenario *sc, const population *p, const stats *a)
{
    double share = (double)sc->connections / p->nusers;
    return (uint64_t)((double)a->posted * p->channels[0].members * share + 0.5);
}

static void summary(const scenario *sc, const population *p, const stats *a, double secs,
                    uint64_t peak)
{
    const hist *l = &a->latency, *c = &a->connect_ms;
    printf("\n== chorus-load: %d sessions asked, %llu held at the end (peak %llu)\n",
           sc->connections, (unsigned long long)a->connected, (unsigned long long)peak);
    printf("connect     p50 %.1f ms  p99 %.1f ms  max %.1f ms; failed: %llu connect, %llu "
           "upgrade; closed by nodes %llu\n",
           hist_quantile(c, .5) / 1e3, hist_quantile(c, .99) / 1e3, c->max_us / 1e3,
           (unsigned long long)a->failed_connect, (unsigned long long)a->failed_upgrade,
           (unsigned long long)a->closed);
    printf("messages    %llu posted (%llu errors); %llu deliveries of %llu due, in %.0f s\n",
           (unsigned long long)a->posted, (unsigned long long)a->post_errors,
           (unsigned long long)a->deliveries, (unsigned long long)expected(sc, p, a), secs);
    printf("latency     p50 %.1f  p95 %.1f  p99 %.1f  max %.1f ms\n",
           hist_quantile(l, .5) / 1e3, hist_quantile(l, .95) / 1e3, hist_quantile(l, .99) / 1e3,
           l->max_us / 1e3);
    printf("order       lost %llu, duplicate %llu, out of order %llu\n",
           (unsigned long long)a->lost, (unsigned long long)a->duplicate,
           (unsigned long long)a->out_of_order);
    for (int j = 0; j < nnodes; j++)
        printf("node :%d    RSS %.1f -> %.1f MiB for %.0f -> %.0f sessions: %.1f KiB a session\n",
               nodes[j].port, nodes[j].rss_first / 1048576, nodes[j].rss_peak / 1048576,
               nodes[j].sessions_first, nodes[j].sessions_peak, node_kib_per_session(&nodes[j]));
    if (!sc->report)
        return;
    FILE *f = fopen(sc->report, "w");
    if (!f)
        return perror(sc->report);
    fprintf(f,
            "{\"sessions_asked\":%d,\"sessions_held\":%llu,\"sessions_peak\":%llu,"
            "\"failed_connect\":%llu,\"failed_upgrade\":%llu,\"closed_by_nodes\":%llu,"
            "\"connect_ms\":{\"p50\":%.2f,\"p99\":%.2f,\"max\":%.2f},"
            "\"posted\":%llu,\"post_errors\":%llu,\"deliveries\":%llu,\"deliveries_due\":%llu,"
            "\"seconds\":%.1f,"
            "\"latency_ms\":{\"p50\":%.2f,\"p95\":%.2f,\"p99\":%.2f,\"max\":%.2f},"
            "\"lost\":%llu,\"duplicate\":%llu,\"out_of_order\":%llu,\"nodes\":[",
            sc->connections, (unsigned long long)a->connected, (unsigned long long)peak,
            (unsigned long long)a->failed_connect, (unsigned long long)a->failed_upgrade,
            (unsigned long long)a->closed, hist_quantile(c, .5) / 1e3,
            hist_quantile(c, .99) / 1e3, c->max_us / 1e3, (unsigned long long)a->posted,
            (unsigned long long)a->post_errors, (unsigned long long)a->deliveries,
            (unsigned long long)expected(sc, p, a), secs,
            hist_quantile(l, .5) / 1e3, hist_quantile(l, .95) / 1e3,
            hist_quantile(l, .99) / 1e3, l->max_us / 1e3, (unsigned long long)a->lost,
            (unsigned long long)a->duplicate, (unsigned long long)a->out_of_order);
    for (int j = 0; j < nnodes; j++)
        fprintf(f, "%s{\"port\":%d,\"rss_first\":%.0f,\"rss_peak\":%.0f,"
                   "\"sessions_first\":%.0f,\"sessions_peak\":%.0f,\"kib_per_session\":%.2f}",
                j ? "," : "", nodes[j].port, nodes[j].rss_first, nodes[j].rss_peak,
                nodes[j].sessions_first, nodes[j].sessions_peak, node_kib_per_session(&nodes[j]));
    fprintf(f, "]}\n");
    fclose(f);
}

int main(int argc, char **argv)
{
    scenario sc;
    const char *pop_path = NULL;
    population pop;
    if (parse(argc, argv, &sc, &pop_path) != 0) {
        usage();
        return 2;
    }
    if (pop_read(&pop, pop_path) != 0)
        return 2;
    if (sc.connections > pop.nusers) {
        fprintf(stderr, "chorus-load: %d connections asked, the population has %d users\n",
                sc.connections, pop.nusers);
        pop_free(&pop);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    static child ch[MAX_CHILDREN];
    int n = 0;
    for (int i = 0; i < sc.workers + sc.publishers; i++, n++)
        if (spawn(&ch[n], &sc, &pop, i < sc.workers ? i : i - sc.workers, i >= sc.workers) != 0) {
            perror("fork");
            return 1;
        }
    uint64_t t0 = now_us(), prev = 0, peak = 0, last_line = 0;
    double end = sc.connections / sc.ramp + 2 + sc.duration + 3; /* ramp, steady, drain */
    stats all;
    while (collect(ch, n, 1000)) {
        double t = (double)(now_us() - t0) / 1e6;
        sum(&all, ch, n);
        peak = all.connected > peak ? all.connected : peak;
        if (now_us() - last_line >= 1000000) { /* one line a second */
            last_line = now_us();
            sample_nodes(ch, n);
            progress(t, &all, prev);
            prev = all.deliveries;
        }
        if (t > end || t > sc.deadline)
            for (int i = 0; i < n; i++)
                kill(ch[i].pid, SIGTERM);
    }
    for (int i = 0; i < n; i++)
        waitpid(ch[i].pid, NULL, 0);
    sum(&all, ch, n);
    summary(&sc, &pop, &all, (double)(now_us() - t0) / 1e6, peak);
    pop_free(&pop);
    return all.lost || all.out_of_order ? 1 : 0;
}
