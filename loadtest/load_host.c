/* load_host.c - the machine's CPU during a run: /proc/stat once a second in the parent,
 * and its summary over the seconds that had deliveries. On a machine that runs the
 * servers and the harness together, "was every core busy?" is the first question a
 * latency figure raises; steal says whether another guest of the host had our cores.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "load.h"

bool host_update(host_sample *h, const char *line)
{
    /* cpu  user nice system idle iowait irq softirq steal [guest guest_nice]: the guest
     * times are already in user and nice */
    unsigned long long v[8] = {0};
    if (strncmp(line, "cpu ", 4) != 0 || /* not "cpu0 ...", a core of its own */
        sscanf(line + 4, "%llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
               &v[3], &v[4], &v[5], &v[6], &v[7]) < 4)
        return false;
    unsigned long long busy = v[0] + v[1] + v[2] + v[5] + v[6], steal = v[7];
    unsigned long long total = busy + v[3] + v[4] + steal;
    if (h->seen && total > h->total) {
        double d = (double)(total - h->total);
        h->busy_pct = 100.0 * (double)(busy - h->busy) / d;
        h->steal_pct = 100.0 * (double)(steal - h->steal) / d;
    } else if (!h->seen) {
        h->busy_pct = h->steal_pct = -1;
    }
    h->busy = busy;
    h->steal = steal;
    h->total = total;
    h->seen = true;
    return true;
}

bool sample_host(host_sample *h)
{
    FILE *f = fopen("/proc/stat", "r");
    char line[512];
    bool ok = f && fgets(line, sizeof line, f) && host_update(h, line);
    if (f)
        fclose(f);
    if (ok && h->cpus == 0)
        h->cpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
    return ok;
}

#define CALIBRATE_CALLS 200000
#define CALIBRATE_TRIPS 10000

/* The child's side of the round trips: a byte back for every byte, until EOF. */
static void echo_bytes(int in, int out)
{
    char b;
    while (read(in, &b, 1) == 1)
        if (write(out, &b, 1) != 1)
            break;
    _exit(0);
}

static double round_trip_us(void)
{
    int there[2], back[2];
    if (pipe(there) != 0)
        return 0;
    if (pipe(back) != 0) {
        close(there[0]);
        close(there[1]);
        return 0;
    }
    pid_t pid = fork();
    if (pid == 0) {
        close(there[1]);
        close(back[0]);
        echo_bytes(there[0], back[1]);
    }
    close(there[0]);
    close(back[1]);
    double us = 0;
    if (pid > 0) {
        char b = 'x';
        uint64_t t0 = now_us();
        int i = 0;
        while (i < CALIBRATE_TRIPS && write(there[1], &b, 1) == 1 && read(back[0], &b, 1) == 1)
            i++;
        us = i == CALIBRATE_TRIPS ? (double)(now_us() - t0) / i : 0;
    }
    close(there[1]); /* the child reads EOF and exits */
    close(back[0]);
    if (pid > 0)
        waitpid(pid, NULL, 0);
    return us;
}

void host_calibrate(host_sample *h)
{
    uint64_t t0 = now_us();
    for (int i = 0; i < CALIBRATE_CALLS; i++)
        syscall(SYS_getppid); /* the call itself: glibc caches nothing for it */
    h->syscall_ns = (double)(now_us() - t0) * 1000.0 / CALIBRATE_CALLS;
    h->wakeup_us = round_trip_us();
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, by_value);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

host_summary host_summarize(const series_row *rows, int n)
{
    host_summary s = {0};
    bool any_deliveries = false;
    for (int i = 0; i < n; i++)
        any_deliveries |= rows[i].deliveries > 0 && rows[i].host_busy_pct >= 0;
    double *busy = malloc((size_t)(n > 0 ? n : 1) * sizeof *busy);
    double *steal = malloc((size_t)(n > 0 ? n : 1) * sizeof *steal);
    for (int i = 0; busy && steal && i < n; i++) {
        const series_row *r = &rows[i];
        if (r->host_busy_pct < 0 || (any_deliveries && r->deliveries == 0))
            continue;
        busy[s.seconds] = r->host_busy_pct;
        steal[s.seconds++] = r->host_steal_pct;
        s.busy_max = r->host_busy_pct > s.busy_max ? r->host_busy_pct : s.busy_max;
        s.steal_max = r->host_steal_pct > s.steal_max ? r->host_steal_pct : s.steal_max;
    }
    if (s.seconds > 0) {
        s.busy_median = median(busy, s.seconds);
        s.steal_median = median(steal, s.seconds);
    }
    s.with_deliveries = any_deliveries;
    free(busy);
    free(steal);
    return s;
}
