/* status.c - the error-message half of the status convention (status.h). */
#include <stdarg.h>
#include <stdio.h>

#include "chorus/status.h"

void chorus_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}
