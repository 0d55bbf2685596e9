-- remove.lua: deletes an entry with its runs; moves the change marker.
--
-- KEYS[1] entry:<name>   HASH  (see upsert.lua)
-- KEYS[2] index          ZSET  entry names
-- KEYS[3] runs:<name>    HASH  "<due>|<field>" -> value (see claim.lua)
-- KEYS[4] run-index:<name> ZSET due times (sortable), score 0
-- KEYS[5] unsent         ZSET  "<due>:<name>" -> lease end, Unix ms
-- KEYS[6] changes        STRING the change counter
--
-- ARGV[1] name
--
-- Returns 1 when the entry existed, else 0 (and changes nothing).

local ENTRY, INDEX, RUNS, RUN_INDEX, UNSENT, CHANGES =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
if redis.call('DEL', ENTRY) == 0 then return 0 end
redis.call('ZREM', INDEX, ARGV[1])
for _, due in ipairs(redis.call('ZRANGE', RUN_INDEX, 0, -1)) do
  redis.call('ZREM', UNSENT, due .. ':' .. ARGV[1])
end
redis.call('DEL', RUNS, RUN_INDEX)
redis.call('INCR', CHANGES)
return 1
