/* migrate.h - schema migrations compiled into the binary from sql/NNN_name.sql.
 *
 * `chorus migrate` applies, in version order, every migration not yet recorded in
 * schema_migrations, each in its own transaction, while holding a session advisory
 * lock so that concurrent runs (several processes starting at once) apply each
 * migration exactly once. Running it again is a no-op. This is a start-up command,
 * not loop code: it uses blocking libpq on purpose.
 */
#ifndef CHORUS_MIGRATE_H
#define CHORUS_MIGRATE_H

#include <stddef.h>

typedef struct migration {
    int version;
    const char *name;
    const char *sql;
} migration;

extern const migration chorus_migrations[];
extern const int chorus_migrations_count;

/* Applies pending migrations. Returns the number applied (>= 0), or CHORUS_ERR with a
 * message in err. */
int migrate_run(const char *conninfo, char *err, size_t errlen);

/* The highest applied version, 0 for none, CHORUS_ERR on failure. */
int migrate_current(const char *conninfo, char *err, size_t errlen);

#endif
