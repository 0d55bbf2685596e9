-- renew.lua: extend the leases of held deliveries to now + ARGV[1] ms, and move
-- their kombu delivery time to now, so kombu's visibility-timeout scan (Python's or
-- celeriac's) never sees a message a live celeriac consumer holds as old.
--
-- KEYS[1] unacked_index     ZSET  tag -> delivery time, Unix seconds
-- KEYS[2] celeriac.leases   ZSET  tag -> lease deadline, Unix ms
-- KEYS[3] celeriac.holders  HASH  tag -> "<token> <delivery count> <queue>"
--
-- ARGV[1]  lease, ms
-- ARGV[2..] pairs: tag, token
--
-- A pair acts only while that delivery holds the message (see ack.lua); stale pairs
-- change nothing. Times are Redis's clock (TIME).
--
-- Returns the number of leases renewed.

local INDEX, LEASES, HOLDERS = KEYS[1], KEYS[2], KEYS[3]

local function held(tag, token)
  local holder = redis.call('HGET', HOLDERS, tag)
  if not holder then return nil end
  local t, count, queue = string.match(holder, '^(%d+) (%d+) (.*)$')
  if t ~= token then return nil end
  local since = tonumber(redis.call('ZSCORE', INDEX, tag))
  local lease = tonumber(redis.call('ZSCORE', LEASES, tag))
  if not since or not lease or since * 1000 > lease + 1 then return nil end
  return tonumber(count), queue
end

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local now_s = time[1] .. '.' .. string.format('%06d', tonumber(time[2]))
local deadline = now_ms + tonumber(ARGV[1])

local renewed = 0
for i = 2, #ARGV, 2 do
  local tag = ARGV[i]
  if held(tag, ARGV[i + 1]) then
    redis.call('ZADD', LEASES, deadline, tag)
    redis.call('ZADD', INDEX, 'XX', now_s, tag)
    renewed = renewed + 1
  end
end
return renewed
