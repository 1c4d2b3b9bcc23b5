/* metrics.h - Prometheus counters, gauges and histograms for one process.
 *
 * One registry per process (single-threaded: no atomics). A family is a metric name
 * with fixed label names; a series is one set of label values. Look a series up once
 * and keep the pointer: series live until metrics_reset(). Each family holds at most
 * METRICS_MAX_SERIES series; label sets past that are folded into one series whose
 * label values are all "_overflow", so a bad label can never grow memory without bound.
 *
 * Naming follows Prometheus conventions: chorus_<area>_<what>_<unit>, counters end in
 * _total, durations are in seconds.
 */
#ifndef CHORUS_METRICS_H
#define CHORUS_METRICS_H

#include <stddef.h>

#include "chorus/buf.h"

#define METRICS_MAX_SERIES 2000
#define METRICS_MAX_LABELS 4

typedef enum metrics_type {
    METRICS_COUNTER,
    METRICS_GAUGE,
    METRICS_HISTOGRAM,
} metrics_type;

typedef struct metrics_family metrics_family;
typedef struct metrics_series metrics_series;

/* Registers a family. labels is a comma-separated list of label names ("route,status")
 * or NULL/"" for none. Registering the same name twice returns the existing family when
 * type and labels match, NULL otherwise (a programming error, logged).
 * For histograms, bounds are the upper bounds of the buckets, ascending (+Inf is
 * implicit); NULL uses metrics_latency_bounds. Other types ignore bounds. */
metrics_family *metrics_family_new(metrics_type type, const char *name, const char *help,
                                   const char *labels, const double *bounds, size_t nbounds);

/* Shorthands for families without labels; they return the single series. */
metrics_series *metrics_counter(const char *name, const char *help);
metrics_series *metrics_gauge(const char *name, const char *help);
metrics_series *metrics_histogram(const char *name, const char *help);

/* Returns the series for these label values (as many as the family has labels).
 * Never NULL for a valid family (see overflow above). Values are copied. */
metrics_series *metrics_series_get(metrics_family *f, const char *const values[]);

/* Convenience for one or two labels. */
metrics_series *metrics_with1(metrics_family *f, const char *v1);
metrics_series *metrics_with2(metrics_family *f, const char *v1, const char *v2);

void metrics_inc(metrics_series *s);                 /* counter or gauge: +1 */
void metrics_add(metrics_series *s, double v);       /* counter (v >= 0) or gauge */
void metrics_set(metrics_series *s, double v);       /* gauge */
void metrics_observe(metrics_series *s, double v);   /* histogram */

/* A gauge whose value is read when metrics are rendered (pool sizes, queue lengths).
 * fn is called with arg during metrics_render. */
typedef double (*metrics_gauge_fn)(void *arg);
void metrics_gauge_func(const char *name, const char *help, metrics_gauge_fn fn, void *arg);

/* Renders every family in the Prometheus text format 0.0.4 into out.
 * Returns CHORUS_OK, or the buf error (CHORUS_AGAIN past its bound). */
int metrics_render(buf *out);

/* Frees every family and series (tests, process exit). */
void metrics_reset(void);

/* Default histogram bounds for latencies in seconds: 0.0005 s to 10 s. */
extern const double metrics_latency_bounds[];
extern const size_t metrics_latency_nbounds;

#endif
