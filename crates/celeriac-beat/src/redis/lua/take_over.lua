-- take_over.lua: hands one stale run (claimed, unsent, lease ended) to a new claimer.
-- The caller finds candidates with ZRANGEBYSCORE on KEYS[2]; this script re-checks
-- one of them and takes it, so each stale run goes to exactly one caller.
--
-- KEYS[1] runs:<name>  HASH  (see claim.lua)
-- KEYS[2] unsent       ZSET  "<due>:<name>" -> lease end, Unix ms (floor)
--
-- ARGV[1] due (sortable), ARGV[2] claimer, ARGV[3] now (sortable), ARGV[4] new lease
-- end (sortable), ARGV[5] new lease end in Unix ms, ARGV[6] name
--
-- Returns {claimer, task id, claimed at, lease end, attempts} of the taken run, or
-- an empty array when it is not stale (any more), is sent, or is gone (a gone or
-- sent run's stale index member is removed).

local RUNS, UNSENT = KEYS[1], KEYS[2]
local due, member = ARGV[1], ARGV[1] .. ':' .. ARGV[6]
if not redis.call('ZSCORE', UNSENT, member) then return {} end
local run = redis.call('HMGET', RUNS, due .. '|t', due .. '|s', due .. '|l')
if not run[1] or run[2] then
  redis.call('ZREM', UNSENT, member)
  return {}
end
if run[3] > ARGV[3] then return {} end
redis.call('HSET', RUNS, due .. '|c', ARGV[2], due .. '|l', ARGV[4])
redis.call('HINCRBY', RUNS, due .. '|a', 1)
redis.call('ZADD', UNSENT, ARGV[5], member)
return redis.call('HMGET', RUNS, due .. '|c', due .. '|t', due .. '|ca', due .. '|l', due .. '|a')
