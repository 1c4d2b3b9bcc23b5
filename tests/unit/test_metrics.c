/* test_metrics.c - the metrics registry and its Prometheus text exposition. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "chorus/metrics.h"
#include "chorus/status.h"

#define PROMTOOL "/usr/bin/promtool"

static int teardown(void **state)
{
    (void)state;
    metrics_reset();
    return 0;
}

/* Renders the registry into a string the caller frees. */
static char *render(void)
{
    buf b;
    buf_init(&b, 0);
    assert_int_equal(metrics_render(&b), CHORUS_OK);
    return buf_steal(&b);
}

static void assert_rendered(const char *want)
{
    char *got = render();
    if (strcmp(got, want) != 0)
        fprintf(stderr, "--- want\n%s--- got\n%s---\n", want, got);
    assert_string_equal(got, want);
    free(got);
}

static double queue_len(void *arg)
{
    return *(double *)arg;
}

/* One family of every kind, labelled and not, renders to exactly this text. */
static const char every_type_text[] =
    "# HELP chorus_test_requests_total Requests handled.\n"
    "# TYPE chorus_test_requests_total counter\n"
    "chorus_test_requests_total 3\n"
    "# HELP chorus_test_http_requests_total HTTP requests by route and status.\n"
    "# TYPE chorus_test_http_requests_total counter\n"
    "chorus_test_http_requests_total{route=\"/messages\",status=\"200\"} 2\n"
    "chorus_test_http_requests_total{route=\"/a\\\\b\\\"c\\nd\",status=\"500\"} 1.5\n"
    "# HELP chorus_test_sessions Open sessions.\n"
    "# TYPE chorus_test_sessions gauge\n"
    "chorus_test_sessions -2\n"
    "# HELP chorus_test_queue_length Queries waiting.\n"
    "# TYPE chorus_test_queue_length gauge\n"
    "chorus_test_queue_length 7\n"
    "# HELP chorus_test_latency_seconds Latency.\n"
    "# TYPE chorus_test_latency_seconds histogram\n"
    "chorus_test_latency_seconds_bucket{route=\"/x\",le=\"0.1\"} 1\n"
    "chorus_test_latency_seconds_bucket{route=\"/x\",le=\"0.5\"} 2\n"
    "chorus_test_latency_seconds_bucket{route=\"/x\",le=\"1\"} 3\n"
    "chorus_test_latency_seconds_bucket{route=\"/x\",le=\"+Inf\"} 4\n"
    "chorus_test_latency_seconds_sum{route=\"/x\"} 3.75\n"
    "chorus_test_latency_seconds_count{route=\"/x\"} 4\n"
    "# HELP chorus_test_empty_total No series yet.\n"
    "# TYPE chorus_test_empty_total counter\n";

static void register_every_type(double *queue)
{
    metrics_series *req = metrics_counter("chorus_test_requests_total", "Requests handled.");
    metrics_family *http =
        metrics_family_new(METRICS_COUNTER, "chorus_test_http_requests_total",
                           "HTTP requests by route and status.", "route,status", NULL, 0);
    metrics_series *sessions = metrics_gauge("chorus_test_sessions", "Open sessions.");
    metrics_gauge_func("chorus_test_queue_length", "Queries waiting.", queue_len, queue);
    static const double bounds[] = {0.1, 0.5, 1};
    metrics_family *lat = metrics_family_new(METRICS_HISTOGRAM, "chorus_test_latency_seconds",
                                             "Latency.", "route", bounds, 3);
    metrics_family_new(METRICS_COUNTER, "chorus_test_empty_total", "No series yet.", "code",
                       NULL, 0);

    metrics_inc(req);
    metrics_add(req, 2);
    metrics_add(metrics_with2(http, "/messages", "200"), 2);
    metrics_add(metrics_with2(http, "/a\\b\"c\nd", "500"), 1.5);
    metrics_set(sessions, 3);
    metrics_add(sessions, -5);
    metrics_series *x = metrics_with1(lat, "/x");
    metrics_observe(x, 0.05);
    metrics_observe(x, 0.5); /* a value equal to a bound belongs to that bucket */
    metrics_observe(x, 0.7);
    metrics_observe(x, 2.5);
}

/* Exact text for counters, gauges, a function gauge and a histogram. */
static void test_render_every_type(void **state)
{
    (void)state;
    double queue = 7;
    register_every_type(&queue);
    assert_rendered(every_type_text);
}

/* promtool accepts the output, lints included. Missing promtool is a failure: the
 * project's test script installs it. */
static void test_promtool_accepts(void **state)
{
    (void)state;
    double queue = 7;
    register_every_type(&queue);
    metrics_series *h = metrics_histogram("chorus_test_default_seconds", "Default bounds.");
    metrics_observe(h, 0.003);
    metrics_observe(h, 42);
    metrics_gauge_func("chorus_test_nan_ratio", "Not a number.", queue_len, &(double){NAN});
    char *text = render();
    assert_true(access(PROMTOOL, X_OK) == 0);
    FILE *p = popen(PROMTOOL " check metrics 1>&2", "w");
    assert_non_null(p);
    fputs(text, p);
    int status = pclose(p);
    if (status != 0)
        fprintf(stderr, "promtool rejected:\n%s", text);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    free(text);
}

/* A counter without labels is exposed as 0 before its first increment. */
static void test_counter_starts_at_zero(void **state)
{
    (void)state;
    assert_non_null(metrics_counter("chorus_test_zero_total", "Zero."));
    assert_rendered("# HELP chorus_test_zero_total Zero.\n"
                    "# TYPE chorus_test_zero_total counter\n"
                    "chorus_test_zero_total 0\n");
}

/* Backslash and newline in help are escaped; an empty help has no HELP line. */
static void test_help_escaping(void **state)
{
    (void)state;
    metrics_gauge("chorus_test_g1", "a\\b\nc \"q\"");
    metrics_gauge("chorus_test_g2", "");
    assert_rendered("# HELP chorus_test_g1 a\\\\b\\nc \"q\"\n"
                    "# TYPE chorus_test_g1 gauge\n"
                    "chorus_test_g1 0\n"
                    "# TYPE chorus_test_g2 gauge\n"
                    "chorus_test_g2 0\n");
}

/* Values print shortest-exact: integers without exponent noise, specials as Prometheus
 * spells them. */
static void test_number_format(void **state)
{
    (void)state;
    metrics_family *f =
        metrics_family_new(METRICS_GAUGE, "chorus_test_num", "n", "v", NULL, 0);
    static const struct {
        const char *label;
        double v;
    } cases[] = {
        {"int", 3},           {"tenth", 0.1},          {"sum", 0.1 + 0.2},
        {"big", 1234567890123456.0}, {"exp", 1e21},     {"small", 1e-7},
        {"nan", NAN},         {"inf", INFINITY},       {"ninf", -INFINITY},
        {"neg", -42.25},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        metrics_set(metrics_with1(f, cases[i].label), cases[i].v);
    assert_rendered("# HELP chorus_test_num n\n"
                    "# TYPE chorus_test_num gauge\n"
                    "chorus_test_num{v=\"int\"} 3\n"
                    "chorus_test_num{v=\"tenth\"} 0.1\n"
                    "chorus_test_num{v=\"sum\"} 0.30000000000000004\n"
                    "chorus_test_num{v=\"big\"} 1234567890123456\n"
                    "chorus_test_num{v=\"exp\"} 1e+21\n"
                    "chorus_test_num{v=\"small\"} 1e-07\n"
                    "chorus_test_num{v=\"nan\"} NaN\n"
                    "chorus_test_num{v=\"inf\"} +Inf\n"
                    "chorus_test_num{v=\"ninf\"} -Inf\n"
                    "chorus_test_num{v=\"neg\"} -42.25\n");
}

/* The same label values give the same series; different ones a different series. */
static void test_series_lookup(void **state)
{
    (void)state;
    metrics_family *f = metrics_family_new(METRICS_COUNTER, "chorus_test_lookup_total", "l",
                                           "a,b", NULL, 0);
    assert_non_null(f);
    metrics_series *s1 = metrics_with2(f, "x", "y");
    assert_ptr_equal(metrics_with2(f, "x", "y"), s1);
    const char *const v[] = {"x", "y"};
    assert_ptr_equal(metrics_series_get(f, v), s1);
    /* The separator keeps ("xy","") and ("x","y") apart. */
    assert_ptr_not_equal(metrics_with2(f, "xy", ""), s1);
    assert_ptr_not_equal(metrics_with2(f, "y", "x"), s1);
    /* Many series stay distinct across table growth. */
    metrics_series *all[500];
    char name[16];
    for (int i = 0; i < 500; i++) {
        snprintf(name, sizeof name, "v%d", i);
        all[i] = metrics_with2(f, name, "z");
    }
    for (int i = 0; i < 500; i++) {
        snprintf(name, sizeof name, "v%d", i);
        assert_ptr_equal(metrics_with2(f, name, "z"), all[i]);
    }
    assert_ptr_equal(metrics_with2(f, "x", "y"), s1);
}

/* Registering a name again returns the family when type and labels match, else NULL. */
static void test_reregister(void **state)
{
    (void)state;
    metrics_family *f =
        metrics_family_new(METRICS_COUNTER, "chorus_test_re_total", "r", "a", NULL, 0);
    assert_non_null(f);
    assert_ptr_equal(metrics_family_new(METRICS_COUNTER, "chorus_test_re_total", "other",
                                        "a", NULL, 0),
                     f);
    assert_null(metrics_family_new(METRICS_GAUGE, "chorus_test_re_total", "r", "a", NULL, 0));
    assert_null(
        metrics_family_new(METRICS_COUNTER, "chorus_test_re_total", "r", "a,b", NULL, 0));
    assert_null(metrics_family_new(METRICS_COUNTER, "chorus_test_re_total", "r", NULL, NULL, 0));
    metrics_series *c = metrics_counter("chorus_test_one_total", "o");
    assert_ptr_equal(metrics_counter("chorus_test_one_total", "o"), c);
}

/* Metric and label names are checked against the Prometheus grammar. */
static void test_invalid_names(void **state)
{
    (void)state;
    assert_null(metrics_counter("1abc_total", "x"));
    assert_null(metrics_counter("a-b_total", "x"));
    assert_null(metrics_counter("", "x"));
    assert_null(metrics_counter(NULL, "x"));
    assert_non_null(metrics_counter("ns:sub_ok_total", "x"));
    assert_non_null(metrics_counter("_under_total", "x"));
    const char *bad_labels[] = {"1x", "a-b", "__reserved", "a,a", "a,", ",a", "a,b,c,d,e",
                                "x y", "é"};
    for (size_t i = 0; i < sizeof bad_labels / sizeof bad_labels[0]; i++)
        assert_null(metrics_family_new(METRICS_GAUGE, "chorus_test_bad", "x", bad_labels[i],
                                       NULL, 0));
    assert_non_null(
        metrics_family_new(METRICS_GAUGE, "chorus_test_good", "x", "_a,B9,c_d,le", NULL, 0));
    /* "le" is the histogram's own label. */
    assert_null(metrics_family_new(METRICS_HISTOGRAM, "chorus_test_h", "x", "le", NULL, 0));
}

/* Histogram bounds must be finite and ascending; a trailing +Inf is dropped. */
static void test_histogram_bounds(void **state)
{
    (void)state;
    const double desc[] = {1, 0.5};
    const double dup[] = {1, 1};
    const double nan[] = {NAN};
    assert_null(metrics_family_new(METRICS_HISTOGRAM, "chorus_test_h1", "h", NULL, desc, 2));
    assert_null(metrics_family_new(METRICS_HISTOGRAM, "chorus_test_h2", "h", NULL, dup, 2));
    assert_null(metrics_family_new(METRICS_HISTOGRAM, "chorus_test_h3", "h", NULL, nan, 1));
    const double with_inf[] = {1, INFINITY};
    metrics_family *f =
        metrics_family_new(METRICS_HISTOGRAM, "chorus_test_h4", "h", NULL, with_inf, 2);
    assert_non_null(f);
    metrics_series *s = metrics_series_get(f, NULL);
    metrics_observe(s, 1);
    metrics_observe(s, 1.0000001);
    metrics_observe(s, NAN); /* NaN counts in +Inf and poisons the sum, as in client_golang */
    assert_rendered("# HELP chorus_test_h4 h\n"
                    "# TYPE chorus_test_h4 histogram\n"
                    "chorus_test_h4_bucket{le=\"1\"} 1\n"
                    "chorus_test_h4_bucket{le=\"+Inf\"} 3\n"
                    "chorus_test_h4_sum NaN\n"
                    "chorus_test_h4_count 3\n");
}

/* The default latency bounds run from 0.5 ms to 10 s, ascending. */
static void test_latency_bounds(void **state)
{
    (void)state;
    assert_int_equal(metrics_latency_nbounds, 14);
    assert_true(metrics_latency_bounds[0] == 0.0005);
    assert_true(metrics_latency_bounds[metrics_latency_nbounds - 1] == 10);
    for (size_t i = 1; i < metrics_latency_nbounds; i++)
        assert_true(metrics_latency_bounds[i] > metrics_latency_bounds[i - 1]);
    metrics_series *h = metrics_histogram("chorus_test_lat_seconds", "l");
    metrics_observe(h, 0.0005);
    char *text = render();
    assert_non_null(strstr(text, "chorus_test_lat_seconds_bucket{le=\"0.0005\"} 1\n"));
    assert_non_null(strstr(text, "chorus_test_lat_seconds_bucket{le=\"2.5\"} 1\n"));
    assert_non_null(strstr(text, "chorus_test_lat_seconds_bucket{le=\"10\"} 1\n"));
    free(text);
}

static size_t count_lines(const char *text, const char *prefix)
{
    size_t n = 0, len = strlen(prefix);
    for (const char *p = text; *p;) {
        n += strncmp(p, prefix, len) == 0;
        const char *nl = strchr(p, '\n');
        p = nl ? nl + 1 : p + strlen(p);
    }
    return n;
}

/* Past METRICS_MAX_SERIES label sets, new ones fold into one "_overflow" series and the
 * family never holds more than the bound. */
static void test_overflow(void **state)
{
    (void)state;
    metrics_family *f = metrics_family_new(METRICS_COUNTER, "chorus_test_over_total", "o",
                                           "user,kind", NULL, 0);
    char v[32];
    metrics_series *first_folded = NULL;
    for (int i = 0; i < METRICS_MAX_SERIES + 100; i++) {
        snprintf(v, sizeof v, "u%d", i);
        metrics_series *s = metrics_with2(f, v, "k");
        assert_non_null(s);
        metrics_inc(s);
        if (i == METRICS_MAX_SERIES - 1)
            first_folded = s;
        if (i >= METRICS_MAX_SERIES - 1)
            assert_ptr_equal(s, first_folded);
    }
    /* Known series still resolve to themselves. */
    metrics_series *u0 = metrics_with2(f, "u0", "k");
    metrics_inc(u0);
    char *text = render();
    assert_int_equal(count_lines(text, "chorus_test_over_total{"), METRICS_MAX_SERIES);
    assert_non_null(strstr(text, "chorus_test_over_total{user=\"u0\",kind=\"k\"} 2\n"));
    assert_non_null(
        strstr(text, "chorus_test_over_total{user=\"_overflow\",kind=\"_overflow\"} 101\n"));
    free(text);
}

/* Label values are stored as valid UTF-8 of bounded length. */
static void test_label_value_sanitized(void **state)
{
    (void)state;
    metrics_family *f =
        metrics_family_new(METRICS_GAUGE, "chorus_test_utf8", "u", "v", NULL, 0);
    metrics_set(metrics_with1(f, "ok\xc3\xa9"), 1);      /* valid: kept */
    metrics_set(metrics_with1(f, "bad\xff\xc3"), 2);     /* invalid bytes -> '?' */
    metrics_set(metrics_with1(f, "bad?\xc3"), 3);        /* same after cleaning: same series */
    metrics_set(metrics_with1(f, NULL), 4);              /* NULL reads as "" */
    char longv[400];
    memset(longv, 'a', sizeof longv - 1);
    longv[sizeof longv - 1] = '\0';
    metrics_set(metrics_with1(f, longv), 5);
    char *text = render();
    assert_non_null(strstr(text, "chorus_test_utf8{v=\"ok\xc3\xa9\"} 1\n"));
    assert_non_null(strstr(text, "chorus_test_utf8{v=\"bad??\"} 3\n"));
    assert_non_null(strstr(text, "chorus_test_utf8{v=\"\"} 4\n"));
    char want[200];
    snprintf(want, sizeof want, "chorus_test_utf8{v=\"%.128s\"} 5\n", longv);
    assert_non_null(strstr(text, want));
    assert_int_equal(count_lines(text, "chorus_test_utf8{"), 4);
    free(text);
}

/* Misuse is ignored (and logged): a counter never goes down, set/observe need the right
 * type, NULL series are harmless. */
static void test_misuse_ignored(void **state)
{
    (void)state;
    metrics_series *c = metrics_counter("chorus_test_mono_total", "m");
    metrics_add(c, 5);
    metrics_add(c, -1);
    metrics_set(c, 100);
    metrics_observe(c, 1);
    metrics_inc(NULL);
    metrics_add(NULL, 1);
    metrics_set(NULL, 1);
    metrics_observe(NULL, 1);
    assert_null(metrics_series_get(NULL, NULL));
    assert_null(metrics_with1(NULL, "x"));
    metrics_series *h = metrics_histogram("chorus_test_mono_seconds", "m");
    metrics_inc(h);
    metrics_set(h, 3);
    assert_rendered("# HELP chorus_test_mono_total m\n"
                    "# TYPE chorus_test_mono_total counter\n"
                    "chorus_test_mono_total 5\n"
                    "# HELP chorus_test_mono_seconds m\n"
                    "# TYPE chorus_test_mono_seconds histogram\n"
                    "chorus_test_mono_seconds_bucket{le=\"0.0005\"} 0\n"
                    "chorus_test_mono_seconds_bucket{le=\"0.001\"} 0\n"
                    "chorus_test_mono_seconds_bucket{le=\"0.0025\"} 0\n"
                    "chorus_test_mono_seconds_bucket{le=\"0.005\"} 0\n"
                    "chorus_test_mono_seconds_bucket{le=\"0.01\"} 0\n"
                    "chorus_test_mono_seconds_bucket{le=\"0.025\"} 0\n"
                    "chorus_test_mono_seconds_bucket{le=\"0.05\"} 0\n"
                    "chorus_test_mono_seconds_bucket{le=\"0.1\"} 0\n"
                    "chorus_test_mono_seconds_bucket{le=\"0.25\"} 0\n"
                    "chorus_test_mono_seconds_bucket{le=\"0.5\"} 0\n"
                    "chorus_test_mono_seconds_bucket{le=\"1\"} 0\n"
                    "chorus_test_mono_seconds_bucket{le=\"2.5\"} 0\n"
                    "chorus_test_mono_seconds_bucket{le=\"5\"} 0\n"
                    "chorus_test_mono_seconds_bucket{le=\"10\"} 0\n"
                    "chorus_test_mono_seconds_bucket{le=\"+Inf\"} 0\n"
                    "chorus_test_mono_seconds_sum 0\n"
                    "chorus_test_mono_seconds_count 0\n");
}

/* A name that a histogram's _bucket/_sum/_count lines use cannot be registered. */
static void test_histogram_name_clash(void **state)
{
    (void)state;
    assert_non_null(metrics_histogram("chorus_test_rt_seconds", "h"));
    assert_null(metrics_gauge("chorus_test_rt_seconds_count", "g"));
    assert_null(metrics_gauge("chorus_test_rt_seconds_sum", "g"));
    assert_non_null(metrics_gauge("chorus_test_rt_seconds_max", "g"));
    assert_non_null(metrics_gauge("chorus_test_b_bucket", "g"));
    assert_null(metrics_histogram("chorus_test_b", "h"));
}

/* A function gauge is read at render time; registering it again replaces the function. */
static void test_gauge_func(void **state)
{
    (void)state;
    double a = 1, b = 2;
    metrics_gauge_func("chorus_test_fn", "f", queue_len, &a);
    assert_rendered("# HELP chorus_test_fn f\n# TYPE chorus_test_fn gauge\nchorus_test_fn 1\n");
    a = 10;
    assert_rendered("# HELP chorus_test_fn f\n# TYPE chorus_test_fn gauge\nchorus_test_fn 10\n");
    metrics_gauge_func("chorus_test_fn", "f", queue_len, &b);
    assert_rendered("# HELP chorus_test_fn f\n# TYPE chorus_test_fn gauge\nchorus_test_fn 2\n");
}

/* Rendering into a full buffer reports the buffer's CHORUS_AGAIN. */
static void test_render_bound(void **state)
{
    (void)state;
    metrics_counter("chorus_test_bound_total", "a help text longer than the bound");
    buf b;
    buf_init(&b, 16);
    assert_int_equal(metrics_render(&b), CHORUS_AGAIN);
    buf_free(&b);
}

/* After a reset the registry is empty and names can be registered afresh. */
static void test_reset(void **state)
{
    (void)state;
    metrics_counter("chorus_test_reset_total", "r");
    metrics_reset();
    assert_rendered("");
    assert_non_null(metrics_gauge("chorus_test_reset_total", "now a gauge"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_render_every_type, teardown),
        cmocka_unit_test_teardown(test_promtool_accepts, teardown),
        cmocka_unit_test_teardown(test_counter_starts_at_zero, teardown),
        cmocka_unit_test_teardown(test_help_escaping, teardown),
        cmocka_unit_test_teardown(test_number_format, teardown),
        cmocka_unit_test_teardown(test_series_lookup, teardown),
        cmocka_unit_test_teardown(test_reregister, teardown),
        cmocka_unit_test_teardown(test_invalid_names, teardown),
        cmocka_unit_test_teardown(test_histogram_bounds, teardown),
        cmocka_unit_test_teardown(test_latency_bounds, teardown),
        cmocka_unit_test_teardown(test_overflow, teardown),
        cmocka_unit_test_teardown(test_label_value_sanitized, teardown),
        cmocka_unit_test_teardown(test_misuse_ignored, teardown),
        cmocka_unit_test_teardown(test_histogram_name_clash, teardown),
        cmocka_unit_test_teardown(test_gauge_func, teardown),
        cmocka_unit_test_teardown(test_render_bound, teardown),
        cmocka_unit_test_teardown(test_reset, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
