-- finish.lua: records that the current claimer published a run.
--
-- KEYS[1] runs:<name>  HASH  (see claim.lua)
-- KEYS[2] unsent       ZSET  "<due>:<name>" -> lease end, Unix ms
--
-- ARGV[1] due (sortable), ARGV[2] claimer, ARGV[3] sent at (sortable), ARGV[4] name
--
-- Returns 1 when ARGV[2] held the unsent run (now sent), else 0 (nothing changes).

local RUNS, UNSENT = KEYS[1], KEYS[2]
local due = ARGV[1]
local run = redis.call('HMGET', RUNS, due .. '|c', due .. '|s')
if run[1] ~= ARGV[2] or run[2] then return 0 end
redis.call('HSET', RUNS, due .. '|s', ARGV[3])
redis.call('ZREM', UNSENT, due .. ':' .. ARGV[4])
return 1
