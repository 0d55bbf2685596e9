-- Records one chord header result and, when it completes the chord, takes the
-- dispatch claim in the same atomic step (Celery 5.7's chord algorithm, same keys).
--
-- KEYS[1] K.j  sorted set of encoded parts, scored by group_index
-- KEYS[2] K.t  counter of parts added to the chord later (add_to_chord)
-- KEYS[3] K.s  chord size, written by the client before the header is sent
-- KEYS[4] K.d  set of "task_id:group_index" already recorded (dedupe)
-- KEYS[5] K    saved GroupResult (only its expiry is refreshed)
-- KEYS[6] K.c  dispatch claim token, or "done" after the body was dispatched
-- ARGV[1] task id          ARGV[2] encoded part [1, id, state, result]
-- ARGV[3] score (group_index, or "+inf")
-- ARGV[4] expiry of the chord keys in seconds (0 = none)
-- ARGV[5] expiry of K in seconds (0 = leave)
-- ARGV[6] claim expiry in seconds   ARGV[7] claim token
-- Returns {ready, totaldiff or false, size or false, claimed (0/1)};
-- ready = -1 when the chord was already dispatched.
local parts, diff, size_key, seen, group, claim =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local task_id, encoded, score = ARGV[1], ARGV[2], ARGV[3]
local expires, group_expires = tonumber(ARGV[4]), tonumber(ARGV[5])
local claim_expires, token = tonumber(ARGV[6]), ARGV[7]

if redis.call('GET', claim) == 'done' then
  return {-1, false, false, 0}
end

local member = task_id .. ':' .. score
if redis.call('SISMEMBER', seen, member) == 0 then
  redis.call('ZADD', parts, score, encoded)
  redis.call('SADD', seen, member)
end
local ready = redis.call('ZCOUNT', parts, '-inf', '+inf')

if expires > 0 then
  redis.call('EXPIRE', parts, expires)
  redis.call('EXPIRE', diff, expires)
  redis.call('EXPIRE', size_key, expires)
  redis.call('EXPIRE', seen, expires)
  if group_expires > 0 then
    redis.call('EXPIRE', group, group_expires)
  end
end

local totaldiff = redis.call('GET', diff)
local size = redis.call('GET', size_key)
local claimed = 0
if size and ready == tonumber(size) + tonumber(totaldiff or 0) then
  if redis.call('SET', claim, token, 'NX', 'EX', claim_expires) then
    claimed = 1
  end
end
return {ready, totaldiff, size, claimed}
