-- restore_expired.lua: put back the messages of celeriac deliveries whose lease
-- lapsed (their consumer died or stalled), at the front of their queue (RPUSH, as
-- kombu restores), keeping the delivery tag as kombu does.
--
-- KEYS[1]   unacked                      HASH  tag -> JSON [envelope, exchange, routing_key]
-- KEYS[2]   unacked_index                ZSET  tag -> delivery time, Unix seconds
-- KEYS[3]   celeriac.leases              ZSET  tag -> lease deadline, Unix ms
-- KEYS[4]   celeriac.holders             HASH  tag -> "<token> <delivery count> <queue>"
-- KEYS[5]   celeriac.deliveries          HASH  tag -> delivery count of its last ended delivery
-- KEYS[6]   celeriac.dead_letters        LIST  dead-letter records (JSON), newest first
-- KEYS[7]   celeriac.dead_letter_counts  HASH  queue -> number of dead letters
-- KEYS[7+n] the list item n goes to (unused unless its mode is 'push')
--
-- ARGV      four per item n: tag, the holders value read by the caller ('' if none),
--           mode, payload
--           mode 'push': RPUSH payload (the held envelope marked redelivered)
--           mode 'dead': the stored entry is unusable; LPUSH payload (a dead-letter record)
--           mode 'drop': the caller found no unacked entry; nothing to move
--
-- An item acts only if holders[tag] still equals the value read (the same delivery)
-- and its lease deadline has passed on Redis's clock (TIME); a renewal in between
-- wins. It then removes the lease and holder. If the message is still held by that
-- delivery (in unacked_index, delivery time no later than the lease) it also removes
-- unacked and unacked_index and moves the message per mode. If a kombu consumer took
-- it again after a kombu restore (later delivery time), only celeriac's entries go.
-- celeriac.deliveries[tag] becomes the delivery count, so the next delivery counts on.
--
-- Returns the number of messages put back in a queue.

local UNACKED, INDEX, LEASES, HOLDERS, DELIVERIES = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local DEAD, DEAD_COUNTS = KEYS[6], KEYS[7]
local TARGETS = 7

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local restored = 0
for n = 1, #ARGV / 4 do
  local tag, holder, mode, payload = ARGV[4 * n - 3], ARGV[4 * n - 2], ARGV[4 * n - 1], ARGV[4 * n]
  local lease = tonumber(redis.call('ZSCORE', LEASES, tag))
  if (redis.call('HGET', HOLDERS, tag) or '') == holder and (not lease or lease <= now_ms) then
    redis.call('ZREM', LEASES, tag)
    local count, queue = string.match(holder, '^%d+ (%d+) (.*)$')
    -- A lease without a holder is left-over state: only the lease goes, and the
    -- message (if held) is left to the visibility-timeout scan.
    if count then
      redis.call('HDEL', HOLDERS, tag)
      local since = tonumber(redis.call('ZSCORE', INDEX, tag))
      if not since then
        -- Already restored by a kombu scan: the message is in its queue.
        redis.call('HSET', DELIVERIES, tag, count)
      elseif not lease or since * 1000 <= lease + 1 then
        redis.call('HDEL', UNACKED, tag)
        redis.call('ZREM', INDEX, tag)
        if mode == 'dead' then
          redis.call('HDEL', DELIVERIES, tag)
          redis.call('LPUSH', DEAD, payload)
          redis.call('HINCRBY', DEAD_COUNTS, queue, 1)
        else
          redis.call('HSET', DELIVERIES, tag, count)
          if mode == 'push' then
            redis.call('RPUSH', KEYS[TARGETS + n], payload)
            restored = restored + 1
          end
        end
      end
    end
  end
end
return restored
