/* outbox.h - the outbox role as a module (see app.h for the role contract). */
#ifndef CHORUS_OUTBOX_H
#define CHORUS_OUTBOX_H

#include "chorus/app.h"

extern const role_def outbox_role;

#endif
