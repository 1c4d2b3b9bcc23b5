/* metrics.c - the process-wide Prometheus registry and its text exposition (0.0.4).
 *
 * Families are kept in registration order so /metrics output is stable between
 * scrapes; series in creation order within a family. Series are found through a small
 * per-family hash table because request handlers may look them up on every request.
 */
#include "chorus/metrics.h"

#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chorus/log.h"
#include "chorus/status.h"

/* A label value longer than this is truncated: a client-controlled string (a path, a
 * user agent) must not be able to make one series arbitrarily large. */
#define METRICS_MAX_VALUE_LEN 128
#define METRICS_MIN_SLOTS 16

struct metrics_series {
    metrics_family *fam;
    metrics_series *next;   /* creation order */
    metrics_series *hnext;  /* hash chain */
    uint64_t hash;
    char *labels;           /* rendered pairs a="x",b="y" (no braces), "" if none */
    double value;           /* counter, gauge */
    double sum;             /* histogram */
    uint64_t count;         /* histogram */
    uint64_t *buckets;      /* histogram: per-bucket (not cumulative), nbounds + 1 */
    const char *values[METRICS_MAX_LABELS]; /* point into key */
    char key[];             /* the label values, each NUL-terminated */
};

struct metrics_family {
    metrics_family *next;
    metrics_type type;
    char *name;
    char *help;
    size_t nlabels;
    char *label_names[METRICS_MAX_LABELS];
    double *bounds;
    size_t nbounds;
    metrics_gauge_fn fn;    /* gauge read at render time, or NULL */
    void *fn_arg;
    metrics_series *first, *last;
    size_t nseries;
    metrics_series **slots;
    size_t nslots;
    bool overflowed;        /* the overflow has been logged once */
};

const double metrics_latency_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                         0.1,    0.25,  0.5,    1,     2.5,   5,    10};
const size_t metrics_latency_nbounds =
    sizeof metrics_latency_bounds / sizeof metrics_latency_bounds[0];

static struct {
    metrics_family *first, *last;
} registry;

static const char *const type_names[] = {"counter", "gauge", "histogram"};

/* ---- names ---- */

static bool is_alpha_(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool metric_name_valid(const char *s)
{
    if (!s || !(is_alpha_(s[0]) || s[0] == ':'))
        return false;
    for (s++; *s; s++)
        if (!is_alpha_(*s) && !is_digit(*s) && *s != ':')
            return false;
    return true;
}

static bool label_name_valid(const char *s, size_t n)
{
    if (n == 0 || !is_alpha_(s[0]))
        return false;
    /* Names starting with "__" are reserved for Prometheus' own use. */
    if (n >= 2 && s[0] == '_' && s[1] == '_')
        return false;
    for (size_t i = 1; i < n; i++)
        if (!is_alpha_(s[i]) && !is_digit(s[i]))
            return false;
    return true;
}

/* ---- number formatting ---- */

/* Shortest of %.15g, %.16g, %.17g that reads back as the same double, so 0.1 prints
 * as "0.1" and 3 as "3" while every value still round-trips exactly. */
static void format_double(char *out, size_t n, double v)
{
    if (isnan(v)) {
        snprintf(out, n, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(out, n, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(out, n, "%.*g", prec, v);
        if (strtod(out, NULL) == v)
            return;
    }
}

/* ---- family registration ---- */

static void family_free(metrics_family *f)
{
    metrics_series *s = f->first;
    while (s) {
        metrics_series *next = s->next;
        free(s->labels);
        free(s->buckets);
        free(s);
        s = next;
    }
    for (size_t i = 0; i < f->nlabels; i++)
        free(f->label_names[i]);
    free(f->slots);
    free(f->bounds);
    free(f->help);
    free(f->name);
    free(f);
}

/* Splits "a,b" into f->label_names. Returns false on a bad or duplicate name. */
static bool family_parse_labels(metrics_family *f, const char *labels)
{
    if (!labels || !*labels)
        return true;
    const char *p = labels;
    for (;;) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (f->nlabels == METRICS_MAX_LABELS || !label_name_valid(p, n))
            return false;
        if (f->type == METRICS_HISTOGRAM && n == 2 && memcmp(p, "le", 2) == 0)
            return false;
        for (size_t i = 0; i < f->nlabels; i++)
            if (strlen(f->label_names[i]) == n && memcmp(f->label_names[i], p, n) == 0)
                return false;
        f->label_names[f->nlabels] = strndup(p, n);
        if (!f->label_names[f->nlabels])
            return false;
        f->nlabels++;
        if (!end)
            return true;
        p = end + 1;
    }
}

/* Copies the bounds, dropping a trailing +Inf (it is implicit). They must be finite and
 * strictly ascending, or the cumulative buckets would not be monotonic. */
static bool family_set_bounds(metrics_family *f, const double *bounds, size_t nbounds)
{
    if (!bounds) {
        bounds = metrics_latency_bounds;
        nbounds = metrics_latency_nbounds;
    }
    if (nbounds > 0 && isinf(bounds[nbounds - 1]) && bounds[nbounds - 1] > 0)
        nbounds--;
    for (size_t i = 0; i < nbounds; i++) {
        if (!isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1]))
            return false;
    }
    f->bounds = malloc((nbounds ? nbounds : 1) * sizeof *f->bounds);
    if (!f->bounds)
        return false;
    if (nbounds)
        memcpy(f->bounds, bounds, nbounds * sizeof *bounds);
    f->nbounds = nbounds;
    return true;
}

static bool family_labels_equal(const metrics_family *a, const metrics_family *b)
{
    if (a->nlabels != b->nlabels)
        return false;
    for (size_t i = 0; i < a->nlabels; i++)
        if (strcmp(a->label_names[i], b->label_names[i]) != 0)
            return false;
    return true;
}

static metrics_family *family_find(const char *name)
{
    for (metrics_family *f = registry.first; f; f = f->next)
        if (strcmp(f->name, name) == 0)
            return f;
    return NULL;
}

/* True when a histogram called hname renders a line named name (name_bucket, ...). */
static bool histogram_owns(const char *hname, const char *name)
{
    size_t n = strlen(hname);
    if (strncmp(hname, name, n) != 0)
        return false;
    const char *suffix = name + n;
    return strcmp(suffix, "_bucket") == 0 || strcmp(suffix, "_sum") == 0 ||
           strcmp(suffix, "_count") == 0;
}

/* A family whose sample names collide with a histogram's would make the exposition
 * ambiguous; reject it at registration rather than emit invalid output. */
static bool family_name_clashes(metrics_type type, const char *name)
{
    for (metrics_family *f = registry.first; f; f = f->next) {
        if (f->type == METRICS_HISTOGRAM && histogram_owns(f->name, name))
            return true;
        if (type == METRICS_HISTOGRAM && histogram_owns(name, f->name))
            return true;
    }
    return false;
}

static metrics_series *series_create(metrics_family *f, const char *const values[]);

static metrics_family *family_build(metrics_type type, const char *name, const char *help,
                                    const char *labels, const double *bounds,
                                    size_t nbounds)
{
    metrics_family *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->type = type;
    f->name = strdup(name);
    f->help = strdup(help ? help : "");
    bool ok = f->name && f->help && family_parse_labels(f, labels);
    if (ok && type == METRICS_HISTOGRAM)
        ok = family_set_bounds(f, bounds, nbounds);
    /* A family without labels has exactly one series, created now so it is exposed
     * (as 0) before its first update. */
    if (ok && f->nlabels == 0)
        ok = series_create(f, NULL) != NULL;
    if (!ok) {
        family_free(f);
        return NULL;
    }
    return f;
}

metrics_family *metrics_family_new(metrics_type type, const char *name, const char *help,
                                   const char *labels, const double *bounds, size_t nbounds)
{
    if ((unsigned)type > METRICS_HISTOGRAM || !metric_name_valid(name)) {
        log_error("metrics: bad family %s", name ? name : "(null)");
        return NULL;
    }
    metrics_family *f = family_build(type, name, help, labels, bounds, nbounds);
    if (!f) {
        log_error("metrics: cannot register %s (labels \"%s\")", name, labels ? labels : "");
        return NULL;
    }
    metrics_family *old = family_find(name);
    if (old) {
        bool same = old->type == type && family_labels_equal(old, f);
        family_free(f);
        if (!same)
            log_error("metrics: %s registered twice with another type or labels", name);
        return same ? old : NULL;
    }
    if (family_name_clashes(type, name)) {
        log_error("metrics: %s clashes with a histogram's series names", name);
        family_free(f);
        return NULL;
    }
    if (registry.last)
        registry.last->next = f;
    else
        registry.first = f;
    registry.last = f;
    return f;
}

static metrics_series *single(metrics_type type, const char *name, const char *help)
{
    metrics_family *f = metrics_family_new(type, name, help, NULL, NULL, 0);
    if (!f)
        return NULL;
    if (f->nlabels != 0) {
        log_error("metrics: %s has labels", name);
        return NULL;
    }
    return f->first;
}

metrics_series *metrics_counter(const char *name, const char *help)
{
    return single(METRICS_COUNTER, name, help);
}

metrics_series *metrics_gauge(const char *name, const char *help)
{
    return single(METRICS_GAUGE, name, help);
}

metrics_series *metrics_histogram(const char *name, const char *help)
{
    return single(METRICS_HISTOGRAM, name, help);
}

void metrics_gauge_func(const char *name, const char *help, metrics_gauge_fn fn, void *arg)
{
    if (!fn) {
        log_error("metrics: %s has no function", name ? name : "(null)");
        return;
    }
    metrics_family *f = metrics_family_new(METRICS_GAUGE, name, help, NULL, NULL, 0);
    if (!f)
        return;
    /* Registering again replaces the function: the latest owner of the name wins. */
    f->fn = fn;
    f->fn_arg = arg;
}

/* ---- series ---- */

static uint64_t hash_values(const char *const values[], size_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        for (const unsigned char *p = (const unsigned char *)values[i]; *p; p++)
            h = (h ^ *p) * 1099511628211ULL;
        h = (h ^ 0xff) * 1099511628211ULL; /* separator: ("ab","") != ("a","b") */
    }
    return h;
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if it is not valid. */
static size_t utf8_seq_len(const unsigned char *s)
{
    if (s[0] < 0x80)
        return 1;
    size_t n = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc2 ? 2 : 0;
    if (n == 0 || s[0] > 0xf4)
        return 0;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    /* Overlong 3/4-byte forms, UTF-16 surrogates and code points past U+10FFFF. */
    if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] >= 0xa0) ||
        (s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] >= 0x90))
        return 0;
    return n;
}

/* The exposition must be UTF-8 and series small: copy v into out (at least
 * METRICS_MAX_VALUE_LEN + 1 bytes) with invalid bytes replaced by '?' and the value cut
 * at a character boundary. Returns v itself when it needs neither. */
static const char *value_normalize(const char *v, char *out)
{
    const unsigned char *p = (const unsigned char *)(v ? v : "");
    size_t i = 0;
    while (p[i] && p[i] < 0x80 && i <= METRICS_MAX_VALUE_LEN)
        i++;
    if (!p[i] && i <= METRICS_MAX_VALUE_LEN)
        return (const char *)p;
    size_t o = 0;
    while (*p) {
        size_t n = utf8_seq_len(p);
        if (o + (n ? n : 1) > METRICS_MAX_VALUE_LEN)
            break;
        if (n == 0) {
            out[o++] = '?';
            p++;
        } else {
            memcpy(out + o, p, n);
            o += n;
            p += n;
        }
    }
    out[o] = '\0';
    return out;
}

static int escape_label_value(buf *b, const char *v)
{
    int rc = CHORUS_OK;
    for (; *v && rc == CHORUS_OK; v++) {
        if (*v == '\\')
            rc = buf_puts(b, "\\\\");
        else if (*v == '"')
            rc = buf_puts(b, "\\\"");
        else if (*v == '\n')
            rc = buf_puts(b, "\\n");
        else
            rc = buf_append(b, v, 1);
    }
    return rc;
}

/* Renders a="x",b="y" once at creation, so a scrape is mostly memcpy. */
static char *render_label_pairs(const metrics_family *f, const char *const values[])
{
    buf b;
    buf_init(&b, 0);
    int rc = buf_puts(&b, "");
    for (size_t i = 0; i < f->nlabels && rc == CHORUS_OK; i++) {
        rc = buf_printf(&b, "%s%s=\"", i ? "," : "", f->label_names[i]);
        if (rc == CHORUS_OK)
            rc = escape_label_value(&b, values[i]);
        if (rc == CHORUS_OK)
            rc = buf_puts(&b, "\"");
    }
    if (rc != CHORUS_OK) {
        buf_free(&b);
        return NULL;
    }
    return buf_steal(&b);
}

static bool series_matches(const metrics_series *s, const char *const values[], size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(s->values[i], values[i]) != 0)
            return false;
    return true;
}

static metrics_series *series_find(const metrics_family *f, const char *const values[],
                                   uint64_t h)
{
    if (!f->slots)
        return NULL;
    for (metrics_series *s = f->slots[h & (f->nslots - 1)]; s; s = s->hnext)
        if (s->hash == h && series_matches(s, values, f->nlabels))
            return s;
    return NULL;
}

/* Keeps the load factor at most 1; chains are re-linked, never reallocated. */
static bool slots_grow(metrics_family *f)
{
    size_t n = f->nslots ? f->nslots * 2 : METRICS_MIN_SLOTS;
    metrics_series **slots = calloc(n, sizeof *slots);
    if (!slots)
        return false;
    for (metrics_series *s = f->first; s; s = s->next) {
        metrics_series **slot = &slots[s->hash & (n - 1)];
        s->hnext = *slot;
        *slot = s;
    }
    free(f->slots);
    f->slots = slots;
    f->nslots = n;
    return true;
}

static metrics_series *series_alloc(const metrics_family *f, const char *const values[])
{
    size_t keylen = 0;
    for (size_t i = 0; i < f->nlabels; i++)
        keylen += strlen(values[i]) + 1;
    metrics_series *s = calloc(1, sizeof *s + keylen + 1);
    if (!s)
        return NULL;
    char *k = s->key;
    for (size_t i = 0; i < f->nlabels; i++) {
        size_t n = strlen(values[i]) + 1;
        memcpy(k, values[i], n);
        s->values[i] = k;
        k += n;
    }
    s->labels = render_label_pairs(f, values);
    if (f->type == METRICS_HISTOGRAM)
        s->buckets = calloc(f->nbounds + 1, sizeof *s->buckets);
    if (!s->labels || (f->type == METRICS_HISTOGRAM && !s->buckets)) {
        free(s->labels);
        free(s->buckets);
        free(s);
        return NULL;
    }
    s->fam = (metrics_family *)f;
    return s;
}

static metrics_series *series_create(metrics_family *f, const char *const values[])
{
    if (f->nseries >= f->nslots && !slots_grow(f))
        return NULL;
    metrics_series *s = series_alloc(f, values);
    if (!s)
        return NULL;
    s->hash = hash_values(values, f->nlabels);
    metrics_series **slot = &f->slots[s->hash & (f->nslots - 1)];
    s->hnext = *slot;
    *slot = s;
    if (f->last)
        f->last->next = s;
    else
        f->first = s;
    f->last = s;
    f->nseries++;
    return s;
}

/* The series every label set past the bound is folded into. The last free place is
 * kept for it, so a family never holds more than METRICS_MAX_SERIES series. */
static metrics_series *series_overflow(metrics_family *f)
{
    const char *values[METRICS_MAX_LABELS];
    for (size_t i = 0; i < f->nlabels; i++)
        values[i] = "_overflow";
    uint64_t h = hash_values(values, f->nlabels);
    metrics_series *s = series_find(f, values, h);
    if (!s && !f->overflowed) {
        f->overflowed = true;
        log_warn("metrics: %s reached %d series; folding new ones into _overflow", f->name,
                 METRICS_MAX_SERIES);
    }
    return s ? s : series_create(f, values);
}

metrics_series *metrics_series_get(metrics_family *f, const char *const values[])
{
    if (!f)
        return NULL;
    if (f->nlabels == 0)
        return f->first;
    char copies[METRICS_MAX_LABELS][METRICS_MAX_VALUE_LEN + 1];
    const char *v[METRICS_MAX_LABELS];
    for (size_t i = 0; i < f->nlabels; i++)
        v[i] = value_normalize(values ? values[i] : NULL, copies[i]);
    uint64_t h = hash_values(v, f->nlabels);
    metrics_series *s = series_find(f, v, h);
    if (s)
        return s;
    if (f->nseries + 1 >= METRICS_MAX_SERIES)
        return series_overflow(f);
    s = series_create(f, v);
    /* Out of memory: count into the overflow series rather than hand back NULL. */
    return s ? s : series_overflow(f);
}

metrics_series *metrics_with1(metrics_family *f, const char *v1)
{
    const char *values[METRICS_MAX_LABELS] = {v1};
    return metrics_series_get(f, values);
}

metrics_series *metrics_with2(metrics_family *f, const char *v1, const char *v2)
{
    const char *values[METRICS_MAX_LABELS] = {v1, v2};
    return metrics_series_get(f, values);
}

/* ---- updates ---- */

static bool series_is(const metrics_series *s, metrics_type type, const char *op)
{
    if (!s)
        return false;
    if (s->fam->type == type)
        return true;
    log_error("metrics: %s on %s %s", op, type_names[s->fam->type], s->fam->name);
    return false;
}

void metrics_inc(metrics_series *s)
{
    metrics_add(s, 1);
}

void metrics_add(metrics_series *s, double v)
{
    if (s && s->fam->type == METRICS_GAUGE) {
        s->value += v;
        return;
    }
    if (!series_is(s, METRICS_COUNTER, "add"))
        return;
    /* A counter only goes up; a negative step would read as a counter reset. */
    if (!(v >= 0)) {
        log_error("metrics: negative add %g on counter %s", v, s->fam->name);
        return;
    }
    s->value += v;
}

void metrics_set(metrics_series *s, double v)
{
    if (series_is(s, METRICS_GAUGE, "set"))
        s->value = v;
}

/* Buckets are upper-inclusive (le): the first bound >= v. NaN lands in +Inf. */
static size_t bucket_index(const metrics_family *f, double v)
{
    size_t lo = 0, hi = f->nbounds;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v <= f->bounds[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

void metrics_observe(metrics_series *s, double v)
{
    if (!series_is(s, METRICS_HISTOGRAM, "observe"))
        return;
    s->buckets[isnan(v) ? s->fam->nbounds : bucket_index(s->fam, v)]++;
    s->sum += v;
    s->count++;
}

/* ---- rendering ---- */

static int render_help(buf *out, const metrics_family *f)
{
    int rc = CHORUS_OK;
    if (f->help[0]) {
        rc = buf_printf(out, "# HELP %s ", f->name);
        for (const char *p = f->help; *p && rc == CHORUS_OK; p++) {
            if (*p == '\\')
                rc = buf_puts(out, "\\\\");
            else if (*p == '\n')
                rc = buf_puts(out, "\\n");
            else
                rc = buf_append(out, p, 1);
        }
        if (rc == CHORUS_OK)
            rc = buf_puts(out, "\n");
    }
    if (rc == CHORUS_OK)
        rc = buf_printf(out, "# TYPE %s %s\n", f->name, type_names[f->type]);
    return rc;
}

static int render_sample(buf *out, const char *name, const char *suffix,
                         const char *labels, double v)
{
    char num[32];
    format_double(num, sizeof num, v);
    if (labels[0])
        return buf_printf(out, "%s%s{%s} %s\n", name, suffix, labels, num);
    return buf_printf(out, "%s%s %s\n", name, suffix, num);
}

static int render_bucket(buf *out, const metrics_series *s, const char *le, uint64_t n)
{
    const char *sep = s->labels[0] ? "," : "";
    return buf_printf(out, "%s_bucket{%s%sle=\"%s\"} %" PRIu64 "\n", s->fam->name,
                      s->labels, sep, le, n);
}

static int render_histogram(buf *out, const metrics_series *s)
{
    const metrics_family *f = s->fam;
    uint64_t cum = 0;
    char le[32];
    int rc = CHORUS_OK;
    for (size_t i = 0; i < f->nbounds && rc == CHORUS_OK; i++) {
        cum += s->buckets[i];
        format_double(le, sizeof le, f->bounds[i]);
        rc = render_bucket(out, s, le, cum);
    }
    if (rc == CHORUS_OK)
        rc = render_bucket(out, s, "+Inf", s->count);
    if (rc == CHORUS_OK)
        rc = render_sample(out, f->name, "_sum", s->labels, s->sum);
    if (rc == CHORUS_OK)
        rc = render_sample(out, f->name, "_count", s->labels, (double)s->count);
    return rc;
}

static int render_family(buf *out, const metrics_family *f)
{
    int rc = render_help(out, f);
    for (const metrics_series *s = f->first; s && rc == CHORUS_OK; s = s->next) {
        if (f->type == METRICS_HISTOGRAM)
            rc = render_histogram(out, s);
        else if (f->fn)
            rc = render_sample(out, f->name, "", s->labels, f->fn(f->fn_arg));
        else
            rc = render_sample(out, f->name, "", s->labels, s->value);
    }
    return rc;
}

int metrics_render(buf *out)
{
    for (const metrics_family *f = registry.first; f; f = f->next) {
        int rc = render_family(out, f);
        if (rc != CHORUS_OK)
            return rc;
    }
    return CHORUS_OK;
}

void metrics_reset(void)
{
    metrics_family *f = registry.first;
    while (f) {
        metrics_family *next = f->next;
        family_free(f);
        f = next;
    }
    registry.first = registry.last = NULL;
}
