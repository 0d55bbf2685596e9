-- ack.lua: acknowledge deliveries: the messages are gone (kombu's ack: ZREM
-- unacked_index + HDEL unacked, plus celeriac's lease and holder entries).
--
-- KEYS[1] unacked              HASH  tag -> JSON [envelope, exchange, routing_key]
-- KEYS[2] unacked_index        ZSET  tag -> delivery time, Unix seconds
-- KEYS[3] celeriac.leases      ZSET  tag -> lease deadline, Unix ms
-- KEYS[4] celeriac.holders     HASH  tag -> "<token> <delivery count> <queue>"
-- KEYS[5] celeriac.deliveries  HASH  tag -> delivery count of its last ended delivery
--
-- ARGV    pairs: tag, token (the delivery being acknowledged)
--
-- A pair acts only while that delivery holds the message: holders[tag] carries the
-- token, and the message is still in unacked_index no later than its lease (a later
-- delivery time means a kombu consumer took it again after a kombu restore). Any
-- other pair is stale and changes nothing.
--
-- Returns the number of messages acknowledged.

local UNACKED, INDEX, LEASES, HOLDERS, DELIVERIES = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

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

local acked = 0
for i = 1, #ARGV, 2 do
  local tag = ARGV[i]
  if held(tag, ARGV[i + 1]) then
    redis.call('HDEL', UNACKED, tag)
    redis.call('ZREM', INDEX, tag)
    redis.call('ZREM', LEASES, tag)
    redis.call('HDEL', HOLDERS, tag)
    redis.call('HDEL', DELIVERIES, tag)
    acked = acked + 1
  end
end
return acked
