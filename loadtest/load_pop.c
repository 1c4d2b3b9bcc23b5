/* load_pop.c - the population the harness runs on: `chorus seed-load` output. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "load.h"

uint64_t now_us(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}

double scenario_posting_start(const scenario *sc)
{
    return sc->connections / sc->ramp + 2;
}

int array_grow(void **arr, int n, int *cap, size_t size)
{
    if (n < *cap)
        return 0;
    int c = *cap ? *cap * 2 : 1024;
    void *a = realloc(*arr, (size_t)c * size);
    if (!a)
        return -1;
    *arr = a;
    *cap = c;
    return 0;
}

static int read_line(population *p, char *line, int *ucap, int *ccap)
{
    long long id, ws = 0;
    int a, b, fields;
    char token[1024];
    if (sscanf(line, "workspace\t%lld", &id) == 1) {
        if (!p->workspace)
            p->workspace = id; /* the first: a channel line without its own means it */
    } else if ((fields = sscanf(line, "channel\t%lld\t%d\t%d\t%lld", &id, &a, &b, &ws)) >= 3) {
        if (array_grow((void **)&p->channels, p->nchannels, ccap, sizeof *p->channels))
            return -1;
        p->channels[p->nchannels++] = (pop_channel){id, a, b, fields == 4 ? ws : 0};
    } else if (sscanf(line, "user\t%d\t%lld\t%1023s", &a, &id, token) == 3) {
        if (a != p->nusers || array_grow((void **)&p->users, p->nusers, ucap, sizeof *p->users))
            return -1;
        p->users[p->nusers++] = (pop_user){id, strdup(token), -1};
    }
    return 0;
}

int pop_read(population *p, const char *path)
{
    memset(p, 0, sizeof *p);
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        return -1;
    }
    char line[2048];
    int ucap = 0, ccap = 0, rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f))
        rc = read_line(p, line, &ucap, &ccap);
    fclose(f);
    if (rc != 0 || !p->workspace || !p->nusers || !p->nchannels) {
        fprintf(stderr, "%s: not the output of `chorus seed-load`\n", path);
        pop_free(p);
        return -1;
    }
    /* each user's first channel: the one whose deliveries it checks */
    for (int k = p->nchannels - 1; k >= 0; k--)
        for (int j = 0; j < p->channels[k].members; j++)
            p->users[(p->channels[k].first + j) % p->nusers].channel = k;
    return 0;
}

void pop_free(population *p)
{
    for (int i = 0; i < p->nusers; i++)
        free(p->users[i].token);
    free(p->users);
    free(p->channels);
    memset(p, 0, sizeof *p);
}
