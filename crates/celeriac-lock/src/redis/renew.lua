-- renew.lua: extend a live lock held with this token to now + ttl.
--
-- KEYS[1] <prefix>celeriac.lock:<key>   HASH (see acquire.lua)
-- KEYS[2] <prefix>celeriac.lock.index   ZSET key -> expires_at
--
-- ARGV[1] key
-- ARGV[2] token
-- ARGV[3] ttl, ms (>= 1)
--
-- A lapsed lock is never revived, and another holder's lock is left alone
-- (compare-and-set on the token). Times are Redis's clock (TIME), Unix ms.
--
-- Returns the new expires_at, or false when this token does not hold a live lock.

local LOCK, INDEX = KEYS[1], KEYS[2]
local key, token, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local held = redis.call('HMGET', LOCK, 'token', 'expires_at')
local expires = tonumber(held[2])
if held[1] ~= token or not expires or expires <= now then
  return false
end
local expires_at = now + ttl
redis.call('HSET', LOCK, 'expires_at', expires_at)
redis.call('PEXPIREAT', LOCK, expires_at)
redis.call('ZADD', INDEX, expires_at, key)
return expires_at
