/* wss.h - the wss role as a module (see app.h for the role contract). */
#ifndef CHORUS_WSS_H
#define CHORUS_WSS_H

#include "chorus/app.h"

extern const role_def wss_role;

#endif
