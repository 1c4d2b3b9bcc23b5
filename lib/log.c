/* log.c - one log stream: text or JSON lines on stderr. */
#include "chorus/log.h"

#include <jansson.h>
#include <libwebsockets.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

#include "chorus/status.h"

#define LOG_LINE_MAX 4096

static log_level min_level = LOG_LVL_INFO;
static bool json_lines;
static char process_name[32] = "chorus";
static char node_name[128];
static char request_id[33];

static const char *const level_names[] = {"debug", "info", "warn", "error"};
static const char *const level_tags[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};

void log_set_node(const char *node)
{
    snprintf(node_name, sizeof node_name, "%s", node ? node : "");
}

void log_init(log_level min, bool json, const char *process)
{
    min_level = min;
    json_lines = json;
    if (process)
        snprintf(process_name, sizeof process_name, "%s", process);
}

int log_level_parse(const char *s, log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (log_level)i;
            return CHORUS_OK;
        }
    }
    return CHORUS_ERR;
}

bool log_enabled(log_level level)
{
    return level >= min_level;
}

void log_set_request_id(const char *rid)
{
    if (rid)
        snprintf(request_id, sizeof request_id, "%s", rid);
    else
        request_id[0] = '\0';
}

const char *log_request_id(void)
{
    return request_id[0] ? request_id : NULL;
}

void log_new_request_id(char out[17])
{
    unsigned char raw[8];
    if (RAND_bytes(raw, sizeof raw) != 1) {
        /* Request ids only correlate lines; a clock-based id is good enough here. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        memcpy(raw, &ts.tv_nsec, sizeof raw < sizeof ts.tv_nsec ? sizeof raw : sizeof ts.tv_nsec);
    }
    for (int i = 0; i < 8; i++)
        snprintf(out + 2 * i, 3, "%02x", raw[i]);
}

static void format_time(char *out, size_t n)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    size_t k = strftime(out, n, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + k, n - k, ".%03ldZ", (long)(tv.tv_usec / 1000));
}

static void emit_json(log_level level, const char *ts, const char *msg)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "ts", ts, "level", level_names[level],
                          "role", process_name, "msg", msg);
    if (!o)
        return;
    if (node_name[0])
        json_object_set_new(o, "node", json_string(node_name));
    if (request_id[0])
        json_object_set_new(o, "req", json_string(request_id));
    char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (line) {
        fprintf(stderr, "%s\n", line);
        free(line);
    }
    json_decref(o);
}

static void emit(log_level level, const char *msg)
{
    char ts[40];
    format_time(ts, sizeof ts);
    if (json_lines) {
        emit_json(level, ts, msg);
        return;
    }
    const char *sep = node_name[0] ? " " : "";
    if (request_id[0])
        fprintf(stderr, "%s %s [%s%s%s] req=%s %s\n", ts, level_tags[level], process_name, sep,
                node_name, request_id, msg);
    else
        fprintf(stderr, "%s %s [%s%s%s] %s\n", ts, level_tags[level], process_name, sep,
                node_name, msg);
}

void log_write(log_level level, const char *fmt, ...)
{
    if (level < min_level)
        return;
    char msg[LOG_LINE_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* One event, one line: a message must not break the line format. */
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    emit(level, msg);
}

void log_lws_emit(int lws_level, const char *line)
{
    log_level level = LOG_LVL_DEBUG;
    if (lws_level & LLL_ERR)
        level = LOG_LVL_ERROR;
    else if (lws_level & LLL_WARN)
        level = LOG_LVL_WARN;
    else if (lws_level & (LLL_NOTICE | LLL_USER))
        level = LOG_LVL_INFO;
    /* lws lines end in a newline; log_write turns it into a space, strip it instead. */
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == ' '))
        n--;
    log_write(level, "lws: %.*s", (int)n, line);
}
