-- dead_letter.lua: end a delivery by moving its message to the dead letters.
--
-- KEYS[1] unacked                      HASH  tag -> JSON [envelope, exchange, routing_key]
-- KEYS[2] unacked_index                ZSET  tag -> delivery time, Unix seconds
-- KEYS[3] celeriac.leases              ZSET  tag -> lease deadline, Unix ms
-- KEYS[4] celeriac.holders             HASH  tag -> "<token> <delivery count> <queue>"
-- KEYS[5] celeriac.deliveries          HASH  tag -> delivery count of its last ended delivery
-- KEYS[6] celeriac.dead_letters        LIST  dead-letter records (JSON), newest first
-- KEYS[7] celeriac.dead_letter_counts  HASH  queue -> number of dead letters
--
-- ARGV[1] tag
-- ARGV[2] token of the delivery
-- ARGV[3] the dead-letter record (JSON {id, queue, reason, at, payload})
-- ARGV[4] the queue it counts for
--
-- Acts only while that delivery holds the message (see ack.lua): removes every trace
-- of the message, LPUSHes the record and counts it for the queue.
--
-- Returns 1 when the message was dead-lettered, 0 for a stale delivery.

local UNACKED, INDEX, LEASES, HOLDERS, DELIVERIES = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local DEAD, DEAD_COUNTS = KEYS[6], KEYS[7]

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

local tag = ARGV[1]
if not held(tag, ARGV[2]) then return 0 end
redis.call('HDEL', UNACKED, tag)
redis.call('ZREM', INDEX, tag)
redis.call('ZREM', LEASES, tag)
redis.call('HDEL', HOLDERS, tag)
redis.call('HDEL', DELIVERIES, tag)
redis.call('LPUSH', DEAD, ARGV[3])
redis.call('HINCRBY', DEAD_COUNTS, ARGV[4], 1)
return 1
