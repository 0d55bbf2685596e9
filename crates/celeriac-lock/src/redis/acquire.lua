-- acquire.lua: take a lock if no live lock holds its key.
--
-- KEYS[1] <prefix>celeriac.lock:<key>   HASH  token, owner, fencing, acquired_at, expires_at
-- KEYS[2] <prefix>celeriac.lock.fencing STRING the last fencing number issued (any key)
-- KEYS[3] <prefix>celeriac.lock.index   ZSET  key -> expires_at
--
-- ARGV[1] key (as listed: `single:...`, `unique:...`)
-- ARGV[2] token
-- ARGV[3] owner
-- ARGV[4] ttl, ms (>= 1)
--
-- Times are Unix milliseconds of Redis's clock (TIME). A lock hash also expires by
-- itself (PEXPIREAT expires_at), so a lapsed lock is gone even if nobody acquires
-- its key again; a hash still present past expires_at counts as free.
--
-- Returns {fencing, acquired_at, expires_at}, or false when a live lock holds the key.

local LOCK, FENCING, INDEX = KEYS[1], KEYS[2], KEYS[3]
local key, token, owner, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local held_until = tonumber(redis.call('HGET', LOCK, 'expires_at'))
if held_until and held_until > now then
  return false
end

local fencing = redis.call('INCR', FENCING)
local expires_at = now + ttl
redis.call('DEL', LOCK)
redis.call('HSET', LOCK,
  'token', token, 'owner', owner, 'fencing', fencing,
  'acquired_at', now, 'expires_at', expires_at)
redis.call('PEXPIREAT', LOCK, expires_at)
redis.call('ZADD', INDEX, expires_at, key)
-- Forget lapsed locks in the index (their hashes expired by themselves).
redis.call('ZREMRANGEBYSCORE', INDEX, '-inf', now)
return {fencing, now, expires_at}
