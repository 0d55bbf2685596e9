-- set_enabled.lua: enables or disables an entry; moves the change marker.
--
-- KEYS[1] entry:<name>   HASH  (see upsert.lua)
-- KEYS[2] changes        STRING the change counter
--
-- ARGV[1] enabled ("1"/"0"), ARGV[2] now (sortable time)
--
-- Returns 1 when the entry exists, else 0 (and changes nothing).

local ENTRY, CHANGES = KEYS[1], KEYS[2]
if redis.call('EXISTS', ENTRY) == 0 then return 0 end
redis.call('HSET', ENTRY, 'enabled', ARGV[1], 'updated', ARGV[2])
redis.call('INCR', CHANGES)
return 1
