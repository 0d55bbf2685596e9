-- claim.lua: claims the run (entry, due) for exactly one caller.
--
-- KEYS[1] entry:<name>     HASH  (see upsert.lua)
-- KEYS[2] runs:<name>      HASH  "<due>|c" claimer, "<due>|t" task id, "<due>|ca"
--                                claimed at, "<due>|l" lease end, "<due>|s" sent at
--                                (absent until published), "<due>|a" attempts
-- KEYS[3] run-index:<name> ZSET  due times (sortable), score 0
-- KEYS[4] unsent           ZSET  "<due>:<name>" -> lease end, Unix ms (floor)
-- KEYS[5] changes          STRING the change counter
--
-- ARGV[1] due, ARGV[2] claimer, ARGV[3] task id, ARGV[4] now, ARGV[5] lease end
-- (sortable times), ARGV[6] lease end in Unix ms, ARGV[7] name, ARGV[8] published
-- runs kept per entry
--
-- The claim succeeds only while the entry exists, is enabled, its last_run is
-- earlier than due and the run is not recorded yet. Then, atomically: last_run =
-- due, total + 1, a one-off entry is disabled (moving the change marker), the run is
-- recorded as unsent, and published runs beyond the latest ARGV[8] are pruned.
--
-- Returns 1 when claimed, else 0.

local ENTRY, RUNS, RUN_INDEX, UNSENT, CHANGES = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local due = ARGV[1]
local state = redis.call('HMGET', ENTRY, 'enabled', 'last_run', 'one_off')
if state[1] ~= '1' then return 0 end
if state[2] and state[2] >= due then return 0 end
if redis.call('HEXISTS', RUNS, due .. '|t') == 1 then return 0 end

redis.call('HSET', ENTRY, 'last_run', due)
redis.call('HINCRBY', ENTRY, 'total', 1)
if state[3] == '1' then
  redis.call('HSET', ENTRY, 'enabled', '0', 'updated', ARGV[4])
  redis.call('INCR', CHANGES)
end
redis.call('HSET', RUNS, due .. '|c', ARGV[2], due .. '|t', ARGV[3], due .. '|ca', ARGV[4],
  due .. '|l', ARGV[5], due .. '|a', '1')
redis.call('ZADD', RUN_INDEX, 0, due)
redis.call('ZADD', UNSENT, ARGV[6], due .. ':' .. ARGV[7])

local kept = tonumber(ARGV[8])
local count = redis.call('ZCARD', RUN_INDEX)
if count > kept then
  for _, old in ipairs(redis.call('ZRANGE', RUN_INDEX, 0, count - kept - 1)) do
    if redis.call('HEXISTS', RUNS, old .. '|s') == 1 then
      redis.call('HDEL', RUNS, old .. '|c', old .. '|t', old .. '|ca', old .. '|l',
        old .. '|s', old .. '|a')
      redis.call('ZREM', RUN_INDEX, old)
    end
  end
end
return 1
