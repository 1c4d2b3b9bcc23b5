/* buf.h - a growable byte buffer with a hard size bound.
 *
 * Every buffer in Chorus has a bound (DESIGN.md: bounded memory). Appends past the
 * bound fail with CHORUS_AGAIN and leave the buffer unchanged, so a caller can turn
 * that into a 413, a close code or a dropped session. The data is always followed by
 * a NUL byte (not counted in len), so text buffers can be used as C strings.
 */
#ifndef CHORUS_BUF_H
#define CHORUS_BUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct buf {
    char *data;  /* NULL until the first append */
    size_t len;  /* bytes used, not counting the trailing NUL */
    size_t cap;  /* bytes allocated */
    size_t max;  /* bound on len; 0 means SIZE_MAX */
} buf;

/* Starts an empty buffer that may hold at most max bytes (0: no bound). No allocation. */
void buf_init(buf *b, size_t max);

/* Frees the storage; the buffer is empty and may be used again. */
void buf_free(buf *b);

/* Empties the buffer and keeps its storage. */
void buf_reset(buf *b);

/* Makes room for n more bytes. CHORUS_AGAIN past the bound, CHORUS_ERR out of memory. */
int buf_reserve(buf *b, size_t n);

/* Appends n bytes. Returns CHORUS_OK, CHORUS_AGAIN (bound) or CHORUS_ERR (memory). */
int buf_append(buf *b, const void *p, size_t n);

/* Appends a NUL-terminated string. Same returns as buf_append. */
int buf_puts(buf *b, const char *s);

/* Appends printf-formatted text. Same returns as buf_append. */
int buf_printf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int buf_vprintf(buf *b, const char *fmt, va_list ap);

/* Hands the storage to the caller (free() it) and empties the buffer. Never NULL
 * unless out of memory: an empty buffer yields "". */
char *buf_steal(buf *b);

#endif
