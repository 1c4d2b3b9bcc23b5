/* status.h - the one status convention of Chorus.
 *
 * Functions that can fail return an int:
 *   CHORUS_OK     (0)  done, or accepted for later completion;
 *   CHORUS_ERR   (-1)  failed: bad input, broken connection, out of memory;
 *   CHORUS_AGAIN (-2)  not now: a bound is reached or a dependency is down; the caller
 *                      may retry later (nginx's NGX_AGAIN).
 * A function that takes a callback and returns anything but CHORUS_OK never calls that
 * callback (libuv's rule); when it returns CHORUS_OK the callback is called exactly once.
 */
#ifndef CHORUS_STATUS_H
#define CHORUS_STATUS_H

#include <stddef.h>

enum {
    CHORUS_OK = 0,
    CHORUS_ERR = -1,
    CHORUS_AGAIN = -2,
};

/* Functions that explain a failure take (char *err, size_t errlen) and fill it with one
 * line through this; err may be NULL or errlen 0, and then nothing is written. */
void chorus_set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
