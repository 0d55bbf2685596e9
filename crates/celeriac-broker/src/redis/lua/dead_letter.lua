-- dead_letter.lua: end a delivery by moving its message to the dead letters.
--
-- KEYS[1] unacked                      HASH  hold -> JSON [envelope, exchange, routing_key]
-- KEYS[2] unacked_index                ZSET  hold -> delivery time, Unix seconds
-- KEYS[3] celeriac.leases              ZSET  hold -> lease deadline, Unix ms
-- KEYS[4] celeriac.dead_letters        LIST  dead-letter records (JSON), newest first
-- KEYS[5] celeriac.dead_letter_counts  HASH  queue -> number of dead letters
--
-- ARGV[1] the hold id of the delivery
-- ARGV[2] the dead-letter record (JSON {id, queue, reason, at, payload})
-- ARGV[3] the queue it counts for
--
-- Acts only while the delivery holds the message (its unacked entry exists):
-- removes every trace of the hold, LPUSHes the record and counts it for the queue.
--
-- Returns 1 when the message was dead-lettered, 0 for a delivery that had ended.

local UNACKED, INDEX, LEASES, DEAD, DEAD_COUNTS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local hold = ARGV[1]

if redis.call('HDEL', UNACKED, hold) == 0 then
  redis.call('ZREM', LEASES, hold)
  return 0
end
redis.call('ZREM', INDEX, hold)
redis.call('ZREM', LEASES, hold)
redis.call('LPUSH', DEAD, ARGV[2])
redis.call('HINCRBY', DEAD_COUNTS, ARGV[3], 1)
return 1
