-- requeue.lua: end a delivery by putting its message back in its queue:
-- 'requeue' = back of the queue (LPUSH, as kombu's reject(requeue=True)),
-- 'release' = front (RPUSH, as kombu's restore of unacked messages).
--
-- KEYS[1] unacked          HASH  hold -> JSON [envelope, exchange, routing_key]
-- KEYS[2] unacked_index    ZSET  hold -> delivery time, Unix seconds
-- KEYS[3] celeriac.leases  ZSET  hold -> lease deadline, Unix ms
-- KEYS[4] the list to push to (the message's queue at its priority)
--
-- ARGV[1] the hold id of the delivery
-- ARGV[2] the envelope to push: the held one marked redelivered, with its delivery
--         count so far (the caller computed both from the unacked entry)
-- ARGV[3] 'requeue' or 'release'
--
-- Acts only while the delivery holds the message (its unacked entry exists):
-- removes the hold (unacked, unacked_index, lease) and pushes the envelope.
--
-- Returns 1 when the message went back, 0 for a delivery that had ended.

local UNACKED, INDEX, LEASES, TARGET = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local hold, envelope, mode = ARGV[1], ARGV[2], ARGV[3]

if redis.call('HDEL', UNACKED, hold) == 0 then
  redis.call('ZREM', LEASES, hold)
  return 0
end
redis.call('ZREM', INDEX, hold)
redis.call('ZREM', LEASES, hold)
if mode == 'release' then
  redis.call('RPUSH', TARGET, envelope)
else
  redis.call('LPUSH', TARGET, envelope)
end
return 1
