/* load_series.c - the run second by second: one row a second in the parent (sessions,
 * deliveries and their latency in that second, the servers' memory, the machine's CPU),
 * written to the JSON report, to DIR/series.tsv, and plotted by gnuplot into
 * DIR/connections.png, DIR/latency.png and DIR/host.png.
 *
 * gnuplot runs as a child process on a script written next to the data, after the run:
 * a plot is never worth slowing the loop that reads the workers.
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "load.h"

#define GNUPLOT_TIMEOUT_S 60

static double node_rss_sum(const servers *sv)
{
    double sum = -1;
    for (int j = 0; j < sv->nnodes; j++)
        if (sv->nodes[j].rss.seen)
            sum = (sum < 0 ? 0 : sum) + sv->nodes[j].rss.now;
    return sum;
}

static double now_or_none(const gauge *g)
{
    return g->seen ? g->now : -1;
}

const series_row *series_add(series *s, double t, const stats *all, const servers *sv)
{
    if (array_grow((void **)&s->rows, s->n, &s->cap, sizeof *s->rows) != 0)
        return NULL;
    hist second;
    hist_diff(&second, &all->latency, &s->prev_latency);
    s->prev_latency = all->latency;
    series_row *r = &s->rows[s->n++];
    *r = (series_row){
        .t = t, .connected = all->connected, .connecting = all->connecting,
        .deliveries = all->deliveries - s->prev_deliveries,
        .p50_ms = second.total ? hist_quantile(&second, .5) / 1e3 : -1,
        .p99_ms = second.total ? hist_quantile(&second, .99) / 1e3 : -1,
        .node_rss = node_rss_sum(sv), .gateway_rss = now_or_none(&sv->gw.rss),
        .pg_rss = now_or_none(&sv->pg.rss), .redis_rss = now_or_none(&sv->redis.rss),
        .host_busy_pct = sv->host.seen ? sv->host.busy_pct : -1,
        .host_steal_pct = sv->host.seen ? sv->host.steal_pct : -1};
    s->prev_deliveries = all->deliveries;
    return r;
}

void series_free(series *s)
{
    free(s->rows);
    memset(s, 0, sizeof *s);
}

/* The figures of a row after its counts, as the columns of both formats name them;
 * -1 for what was not measured. */
#define NFIGURES 8
static const char *const figure_names[NFIGURES] = {
    "p50_ms",          "p99_ms",           "node_rss_mib",  "gateway_rss_mib",
    "postgres_rss_mib", "redis_rss_mib", "host_busy_pct", "host_steal_pct"};

static void row_figures(const series_row *r, double out[NFIGURES])
{
    const double mib = 1048576;
    const double bytes[] = {r->node_rss, r->gateway_rss, r->pg_rss, r->redis_rss};
    out[0] = r->p50_ms;
    out[1] = r->p99_ms;
    for (int i = 0; i < 4; i++)
        out[2 + i] = bytes[i] < 0 ? -1 : bytes[i] / mib;
    out[6] = r->host_busy_pct;
    out[7] = r->host_steal_pct;
}

json_t *series_json(const series *s)
{
    json_t *rows = json_array();
    for (int i = 0; rows && i < s->n; i++) {
        const series_row *r = &s->rows[i];
        json_t *o = json_pack("{s:f,s:I,s:I,s:I}", "t", round(r->t * 10) / 10, "connected",
                              (json_int_t)r->connected, "connecting",
                              (json_int_t)r->connecting, "deliveries",
                              (json_int_t)r->deliveries);
        double fig[NFIGURES];
        row_figures(r, fig);
        for (int k = 0; o && k < NFIGURES; k++)
            json_object_set_new(o, figure_names[k], fig[k] < 0 ? json_null() : json_real(fig[k]));
        json_array_append_new(rows, o);
    }
    return rows;
}

static int write_tsv(const series *s, const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs("# t_s\tconnected\tconnecting\tdeliveries", f);
    for (int k = 0; k < NFIGURES; k++)
        fprintf(f, "\t%s", figure_names[k]);
    fputc('\n', f);
    for (int i = 0; i < s->n; i++) {
        const series_row *r = &s->rows[i];
        double fig[NFIGURES];
        row_figures(r, fig);
        fprintf(f, "%.1f\t%llu\t%llu\t%llu", r->t, (unsigned long long)r->connected,
                (unsigned long long)r->connecting, (unsigned long long)r->deliveries);
        for (int k = 0; k < NFIGURES; k++)
            if (fig[k] < 0)
                fputs("\t-", f);
            else
                fprintf(f, "\t%.3f", fig[k]);
        fputc('\n', f);
    }
    return fclose(f);
}

static bool any_latency(const series *s)
{
    for (int i = 0; i < s->n; i++)
        if (s->rows[i].p50_ms > 0)
            return true;
    return false;
}

static bool any_host(const series *s)
{
    for (int i = 0; i < s->n; i++)
        if (s->rows[i].host_busy_pct >= 0)
            return true;
    return false;
}

/* The script, with paths relative to dir (gnuplot runs there: no quoting of paths). */
static int write_script(const series *s, const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs("# chorus-load: written by the harness; run in this directory: gnuplot plots.gp\n"
          "set terminal pngcairo size 1000,500\n"
          "set datafile separator \"\\t\"\n"
          "set datafile missing \"-\"\n"
          "set grid\nset key bottom right\nset xlabel \"seconds\"\n", f);
    fprintf(f, "set xrange [0:%.0f]\n", s->n ? ceil(s->rows[s->n - 1].t) : 1);
    fputs("set output \"connections.png\"\n"
          "set title \"chorus-load: sessions\"\nset ylabel \"sessions\"\nset yrange [0:*]\n"
          "plot \"series.tsv\" using 1:2 with lines lw 2 title \"connected\", \\\n"
          "     \"\" using 1:3 with lines title \"connecting\"\n", f);
    if (any_host(s))
        fputs("set output \"host.png\"\n"
              "set title \"chorus-load: the machine's CPU, all cores\"\n"
              "set ylabel \"%\"\nset yrange [0:100]\nset key top right\n"
              "plot \"series.tsv\" using 1:11 with lines lw 2 title \"busy\", \\\n"
              "     \"\" using 1:12 with lines title \"stolen by the hypervisor\"\n", f);
    /* a log axis with no point at all is an error in gnuplot: no latency plot then */
    if (any_latency(s))
        fputs("set output \"latency.png\"\n"
              "set title \"chorus-load: delivery latency of each second\"\n"
              "set ylabel \"ms\"\nset yrange [*:*]\nset logscale y\nset key bottom right\n"
              "plot \"series.tsv\" using 1:5 with linespoints title \"p50\", \\\n"
              "     \"\" using 1:6 with linespoints title \"p99\"\n", f);
    return fclose(f);
}

bool plots_available(void)
{
    const char *path = getenv("PATH");
    for (const char *p = path; p && *p;) {
        size_t n = strcspn(p, ":");
        char exe[4096];
        if (n > 0 && n < sizeof exe - 9) {
            snprintf(exe, sizeof exe, "%.*s/gnuplot", (int)n, p);
            if (access(exe, X_OK) == 0)
                return true;
        }
        p += n + (p[n] == ':');
    }
    return false;
}

/* Runs gnuplot plots.gp in dir and waits for it (bounded); its exit status, 127 when it
 * could not be started. */
static int run_gnuplot(const char *dir)
{
    pid_t pid = fork();
    if (pid < 0)
        return 127;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (chdir(dir) == 0)
            execlp("gnuplot", "gnuplot", "plots.gp", (char *)NULL);
        _exit(127);
    }
    int status = 0;
    for (int waited = 0; waitpid(pid, &status, WNOHANG) == 0; waited++) {
        if (waited == GNUPLOT_TIMEOUT_S * 10) {
            fprintf(stderr, "chorus-load: gnuplot ran %d s: stopped\n", GNUPLOT_TIMEOUT_S);
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return 1;
        }
        nanosleep(&(struct timespec){0, 100000000}, NULL);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

int plots_write(const series *s, const char *dir)
{
    char tsv[4096], gp[4096];
    snprintf(tsv, sizeof tsv, "%s/series.tsv", dir);
    snprintf(gp, sizeof gp, "%s/plots.gp", dir);
    if ((mkdir(dir, 0755) != 0 && errno != EEXIST) || write_tsv(s, tsv) != 0 ||
        write_script(s, gp) != 0) {
        perror(dir);
        return -1;
    }
    int rc = run_gnuplot(dir);
    if (rc == 127) {
        fprintf(stderr, "chorus-load: gnuplot not found: %s written, no PNG plots "
                        "(Debian: apt-get install gnuplot-nox)\n", tsv);
        return -1;
    }
    if (rc != 0) {
        fprintf(stderr, "chorus-load: gnuplot failed (exit %d) on %s\n", rc, gp);
        return -1;
    }
    if (!any_latency(s))
        fprintf(stderr, "chorus-load: no deliveries: %s/latency.png not drawn\n", dir);
    return 0;
}
