-- upsert.lua: creates an entry or replaces its configuration, keeping its run state
-- (last_run, total) and its creation time; moves the change marker.
--
-- KEYS[1] entry:<name>   HASH  config (Entry JSON), enabled, one_off, last_run, total,
--                              created, updated
-- KEYS[2] index          ZSET  entry names, score 0 (ordered by name)
-- KEYS[3] changes        STRING the change counter
--
-- ARGV[1] name, ARGV[2] config JSON, ARGV[3] enabled ("1"/"0"), ARGV[4] one_off
-- ("1"/"0"), ARGV[5] now (sortable time), ARGV[6] created (sortable time, for a new
-- entry)
--
-- Times are "sortable times": Unix nanoseconds with the sign bit flipped, as 20
-- decimal digits, so string order is time order.
--
-- Returns 1 when the entry was created, 0 when it was replaced.

local ENTRY, INDEX, CHANGES = KEYS[1], KEYS[2], KEYS[3]
local created = 0
if redis.call('EXISTS', ENTRY) == 0 then
  redis.call('HSET', ENTRY, 'total', '0', 'created', ARGV[6])
  created = 1
end
redis.call('HSET', ENTRY, 'config', ARGV[2], 'enabled', ARGV[3], 'one_off', ARGV[4],
  'updated', ARGV[5])
redis.call('ZADD', INDEX, 0, ARGV[1])
redis.call('INCR', CHANGES)
return created
