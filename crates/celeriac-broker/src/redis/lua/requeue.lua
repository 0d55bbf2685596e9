-- requeue.lua: end a delivery by putting its message back in its queue:
-- 'requeue' = back of the queue (LPUSH, as kombu's reject(requeue=True)), the
-- delivery counts; 'release' = front (RPUSH, as kombu's restore of unacked
-- messages), as if never taken: the delivery count is taken back.
--
-- KEYS[1] unacked              HASH  tag -> JSON [envelope, exchange, routing_key]
-- KEYS[2] unacked_index        ZSET  tag -> delivery time, Unix seconds
-- KEYS[3] celeriac.leases      ZSET  tag -> lease deadline, Unix ms
-- KEYS[4] celeriac.holders     HASH  tag -> "<token> <delivery count> <queue>"
-- KEYS[5] celeriac.deliveries  HASH  tag -> delivery count of its last ended delivery
-- KEYS[6] the list to push to (the message's queue at its priority)
--
-- ARGV[1] tag
-- ARGV[2] token of the delivery
-- ARGV[3] the envelope to push: the held one marked redelivered
--         (headers.redelivered and properties.delivery_info.redelivered = true)
-- ARGV[4] 'requeue' or 'release'
--
-- Acts only while that delivery holds the message (see ack.lua): removes the hold
-- (unacked, unacked_index, lease, holder), records the delivery count in
-- celeriac.deliveries (the next delivery counts from it) and pushes the envelope.
--
-- Returns 1 when the message went back, 0 for a stale delivery.

local UNACKED, INDEX, LEASES, HOLDERS, DELIVERIES = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local TARGET = KEYS[6]

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

local tag, envelope, mode = ARGV[1], ARGV[3], ARGV[4]
local count = held(tag, ARGV[2])
if not count then return 0 end
redis.call('HDEL', UNACKED, tag)
redis.call('ZREM', INDEX, tag)
redis.call('ZREM', LEASES, tag)
redis.call('HDEL', HOLDERS, tag)
if mode == 'release' then
  redis.call('HSET', DELIVERIES, tag, count - 1)
  redis.call('RPUSH', TARGET, envelope)
else
  redis.call('HSET', DELIVERIES, tag, count)
  redis.call('LPUSH', TARGET, envelope)
end
return 1
