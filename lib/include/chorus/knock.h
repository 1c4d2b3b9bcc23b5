/* knock.h - a writer's hint to the outbox workers that it has just committed outbox rows
 * (docs/OUTBOX.md "Wake-up").
 *
 * An idle outbox lane polls with a wait that grows to outbox_poll_max_ms, and that wait
 * was most of a message's delivery time at ordinary rates (9 of 11.5 ms at 50 messages
 * a second). So after a write commits, its writer adds an entry to the stream
 * KNOCK_STREAM, and every outbox worker, blocked on that stream, wakes its idle lanes at
 * once. A knock is only a hint: a lost one costs the poll's wait, never an event.
 *
 * Bounds: one knock in flight per knocker. Knocks asked for meanwhile collapse into one,
 * sent when the reply comes (the rows they stand for were committed before it is sent).
 * The stream keeps about KNOCK_MAXLEN entries. Metric: chorus_outbox_knocks_total.
 */
#ifndef CHORUS_KNOCK_H
#define CHORUS_KNOCK_H

#include "chorus/rclient.h"

#define KNOCK_STREAM "chorus:outbox:knock"
#define KNOCK_MAXLEN "1000"

typedef struct knocker knocker;

/* A knocker on redis (not owned; it may be freed first). NULL when out of memory. */
knocker *knocker_new(rclient *redis);

/* After a write's commit: knock now, or once the knock in flight is answered. */
void knocker_knock(knocker *k);

/* Frees it; with a knock in flight, the reply's callback does (NULL is fine). */
void knocker_free(knocker *k);

#endif
