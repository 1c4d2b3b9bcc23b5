/* load_store.c - the stores' side of a run: the memory of Postgres (its processes, from
 * /proc) and of Redis (INFO memory). Both are read once a second by the parent.
 */
#include <ctype.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "load.h"

/* ---- Postgres ------------------------------------------------------------------------- */

static long pidfile_pid(const char *path)
{
    FILE *f = fopen(path, "r");
    long pid = 0;
    if (f) {
        if (fscanf(f, "%ld", &pid) != 1)
            pid = 0;
        fclose(f);
    }
    return pid;
}

/* The parent of pid (from /proc/pid/stat; the command name may hold spaces and
 * parentheses, so the fields are read after its last ')'); -1 when it is gone. */
static long parent_of(long pid)
{
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char *got = fgets(line, sizeof line, f);
    fclose(f);
    char *p = got ? strrchr(line, ')') : NULL;
    long ppid = -1;
    if (!p || sscanf(p + 1, " %*c %ld", &ppid) != 1)
        return -1;
    return ppid;
}

/* Resident bytes of pid (statm); -1 when it is gone. */
static double rss_of(long pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/statm", pid);
    FILE *f = fopen(path, "r");
    long pages = -1;
    if (f) {
        if (fscanf(f, "%*d %ld", &pages) != 1)
            pages = -1;
        fclose(f);
    }
    return pages < 0 ? -1 : (double)pages * (double)sysconf(_SC_PAGESIZE);
}

/* Proportional set size of pid in bytes: shared pages (shared_buffers) divided among the
 * processes that map them, so a sum over the backends counts them once; -1 when
 * unreadable (another user's process, without the right to trace it). */
static double pss_of(long pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/smaps_rollup", pid);
    FILE *f = fopen(path, "r");
    double kib = -1;
    while (f && kib < 0 && fgets(line, sizeof line, f))
        if (strncmp(line, "Pss:", 4) == 0)
            kib = atof(line + 4);
    if (f)
        fclose(f);
    return kib < 0 ? -1 : kib * 1024;
}

bool sample_postgres(pg_sample *pg)
{
    long master = pidfile_pid(pg->pidfile);
    double rss = master > 0 ? rss_of(master) : -1, pss = master > 0 ? pss_of(master) : -1;
    if (rss < 0)
        return false;
    bool pss_ok = pss >= 0;
    int n = 1;
    DIR *d = opendir("/proc");
    for (struct dirent *e = d ? readdir(d) : NULL; e; e = readdir(d)) {
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        long pid = atol(e->d_name);
        double r;
        if (parent_of(pid) != master || (r = rss_of(pid)) < 0)
            continue; /* not a backend, or gone since */
        double p = pss_of(pid);
        rss += r;
        pss += p;
        pss_ok &= p >= 0;
        n++;
    }
    if (d)
        closedir(d);
    gauge_set(&pg->rss, rss);
    if (pss_ok)
        gauge_set(&pg->pss, pss);
    pg->pss_ok = pss_ok;
    pg->processes = n;
    return true;
}

/* ---- Redis ---------------------------------------------------------------------------- */

bool sample_redis(redis_sample *r)
{
    /* QUIT closes the connection after the answer: sample_ask reads to the close */
    static const char req[] = "INFO memory\r\nQUIT\r\n";
    return sample_pair(sample_ask(r->port, req, sizeof req - 1), ':', "used_memory", &r->used,
                       "used_memory_rss", &r->rss);
}
