/* memv.h - the Redis keys of the WSS membership cache, shared by the two sides that
 * touch them: the outbox worker bumps a user's membership version for every membership
 * change it publishes (outbox-worker/outbox_memv.c), and a WSS node reads and fills the
 * cached channel list (wss/wss_members.c, which explains why the cache is right).
 *
 *   chorus:memv:<user>     the user's membership version, a decimal integer
 *   chorus:members:<user>  "<version>|<ch>,<ch>,..." (nothing after '|': no channels):
 *                          the channel list as Postgres gave it under that version
 */
#ifndef CHORUS_MEMV_H
#define CHORUS_MEMV_H

#define MEMV_KEY_PREFIX "chorus:memv:"
#define MEMV_MEMBERS_PREFIX "chorus:members:"
/* Longest key: a prefix and a user id (at most 20 characters). */
#define MEMV_KEY_MAX 40

/* Lua that sets the local `now` to the Redis server's clock in microseconds, as a
 * decimal string. A version key that does not exist starts at `now`, not at 1: a
 * version then never takes a value it had before its key expired (or was evicted), so
 * a cached list tagged with an old version can never match again. */
#define MEMV_LUA_NOW                                                                     \
    "local t = redis.call('TIME') "                                                      \
    "local now = t[1] .. string.format('%06d', tonumber(t[2])) "

#endif
