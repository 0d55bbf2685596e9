-- list.lua: every live lock.
--
-- KEYS[1] <prefix>celeriac.lock.index   ZSET key -> expires_at
--
-- ARGV[1] the prefix of lock hashes: <prefix>celeriac.lock:
--
-- Reads the hash of every key in the index that has not lapsed (Redis's clock,
-- TIME). The hashes' names are built here from the index, so this script suits a
-- single Redis server (as kombu's transport does), not a cluster.
--
-- Returns a flat array: key, owner, fencing, acquired_at, expires_at, key, ... in
-- index order (by expiry); the caller sorts by key.

local INDEX = KEYS[1]
local hash_prefix = ARGV[1]

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local out = {}
local keys = redis.call('ZRANGEBYSCORE', INDEX, '(' .. now, '+inf')
for _, key in ipairs(keys) do
  local held = redis.call('HMGET', hash_prefix .. key,
    'owner', 'fencing', 'acquired_at', 'expires_at')
  local expires = tonumber(held[4])
  if expires and expires > now then
    out[#out + 1] = key
    out[#out + 1] = held[1] or ''
    out[#out + 1] = held[2] or '0'
    out[#out + 1] = held[3] or '0'
    out[#out + 1] = held[4]
  end
end
return out
