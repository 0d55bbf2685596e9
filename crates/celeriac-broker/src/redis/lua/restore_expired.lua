-- restore_expired.lua: put back the messages of celeriac deliveries whose lease
-- lapsed (their consumer died or stalled), at the front of their queue (RPUSH, as
-- kombu restores).
--
-- KEYS[1]   unacked                      HASH  hold -> JSON [envelope, exchange, routing_key]
-- KEYS[2]   unacked_index                ZSET  hold -> delivery time, Unix seconds
-- KEYS[3]   celeriac.leases              ZSET  hold -> lease deadline, Unix ms
-- KEYS[4]   celeriac.dead_letters        LIST  dead-letter records (JSON), newest first
-- KEYS[5]   celeriac.dead_letter_counts  HASH  queue -> number of dead letters
-- KEYS[5+n] the list item n goes to (unused unless its mode is 'push')
--
-- ARGV      four per item n: hold id, mode, payload, queue
--           mode 'push': RPUSH payload (the held envelope marked redelivered, with
--                        its delivery count so far)
--           mode 'dead': the stored entry is unusable; LPUSH payload (a dead-letter
--                        record) and count it for queue
--           mode 'drop': the caller found no unacked entry; only the lease goes
--
-- An item acts only if its lease deadline has passed on Redis's clock (TIME): a
-- renewal or an ack in between wins. It then removes the lease and, if the message
-- is still held (its unacked entry exists; a kombu scan may have restored it
-- already), unacked and unacked_index, and moves the message per mode.
--
-- Returns the number of messages put back in a queue.

local UNACKED, INDEX, LEASES, DEAD, DEAD_COUNTS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local TARGETS = 5

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local restored = 0
for n = 1, #ARGV / 4 do
  local hold, mode, payload, queue = ARGV[4 * n - 3], ARGV[4 * n - 2], ARGV[4 * n - 1], ARGV[4 * n]
  local lease = tonumber(redis.call('ZSCORE', LEASES, hold))
  if lease and lease <= now_ms then
    redis.call('ZREM', LEASES, hold)
    if mode ~= 'drop' and redis.call('HDEL', UNACKED, hold) == 1 then
      redis.call('ZREM', INDEX, hold)
      if mode == 'push' then
        redis.call('RPUSH', KEYS[TARGETS + n], payload)
        restored = restored + 1
      elseif mode == 'dead' then
        redis.call('LPUSH', DEAD, payload)
        redis.call('HINCRBY', DEAD_COUNTS, queue, 1)
      end
    end
  end
end
return restored
