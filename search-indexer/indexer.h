/* indexer.h - the indexer role as a module (see app.h for the role contract). */
#ifndef CHORUS_INDEXER_H
#define CHORUS_INDEXER_H

#include "chorus/app.h"

extern const role_def indexer_role;

#endif
