-- release.lua: delete a lock if this token holds it (compare-and-delete), or, with
-- an empty token, whoever holds it (an operator's forced release).
--
-- KEYS[1] <prefix>celeriac.lock:<key>   HASH (see acquire.lua)
-- KEYS[2] <prefix>celeriac.lock.index   ZSET key -> expires_at
--
-- ARGV[1] key
-- ARGV[2] token, or '' to release whoever holds the lock
--
-- Another holder's lock is left alone. Times are Redis's clock (TIME), Unix ms.
--
-- Returns 1 when a live lock was deleted, 0 otherwise (no lock, another holder's, or
-- a lapsed one, which is deleted too: it is free anyway).

local LOCK, INDEX = KEYS[1], KEYS[2]
local key, token = ARGV[1], ARGV[2]

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local held = redis.call('HMGET', LOCK, 'token', 'expires_at')
if not held[1] or (token ~= '' and held[1] ~= token) then
  return 0
end
redis.call('DEL', LOCK)
redis.call('ZREM', INDEX, key)
local expires = tonumber(held[2])
if expires and expires > now then
  return 1
end
return 0
