/* log.h - the one log stream of a Chorus process.
 *
 * One line per event on stderr, either "text" (timestamp LEVEL [role] message, with
 * req=<id> when a request is being handled) or JSON lines
 * ({"ts":..,"level":..,"role":..,"req":..,"msg":..}). libwebsockets' own log output is
 * routed here as well (log_lws_emit). Single-threaded: each process has one loop.
 */
#ifndef CHORUS_LOG_H
#define CHORUS_LOG_H

#include <stdbool.h>
#include <stddef.h>

typedef enum log_level {
    LOG_LVL_DEBUG = 0,
    LOG_LVL_INFO = 1,
    LOG_LVL_WARN = 2,
    LOG_LVL_ERROR = 3,
} log_level;

/* Sets the minimum level, the format and the process name shown in each line. */
void log_init(log_level min, bool json, const char *process);
/* The node id shown beside the process name ("node" in JSON lines): the scaler's
 * replicas share one log, and a line must say which of them wrote it. "" or NULL: none. */
void log_set_node(const char *node);

/* Parses "debug", "info", "warn" or "error". Returns CHORUS_OK or CHORUS_ERR. */
int log_level_parse(const char *s, log_level *out);

/* True when a message at this level would be written (to skip costly formatting). */
bool log_enabled(log_level level);

/* Sets the request id attached to following lines (NULL clears it). The id is copied.
 * Handlers set it on entry and clear it before returning to the loop. */
void log_set_request_id(const char *rid);
const char *log_request_id(void);

/* Writes a fresh random request id of 16 hex characters into out (17 bytes). */
void log_new_request_id(char out[17]);

void log_write(log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_write(LOG_LVL_DEBUG, __VA_ARGS__)
#define log_info(...) log_write(LOG_LVL_INFO, __VA_ARGS__)
#define log_warn(...) log_write(LOG_LVL_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_LVL_ERROR, __VA_ARGS__)

/* libwebsockets log emitter: pass to lws_set_log_level(). */
void log_lws_emit(int lws_level, const char *line);

#endif
