-- restore_visible.lua: kombu's visibility-timeout recovery (restore_visible) for
-- messages held by consumers that keep no celeriac lease (Python workers): entries
-- of unacked_index older than the visibility timeout go back to the front of their
-- queue (RPUSH), tag kept. The caller holds unacked_mutex, as kombu does.
--
-- KEYS[1]   unacked                      HASH  tag -> JSON [envelope, exchange, routing_key]
-- KEYS[2]   unacked_index                ZSET  tag -> delivery time, Unix seconds
-- KEYS[3]   celeriac.leases              ZSET  tag -> lease deadline, Unix ms
-- KEYS[4]   celeriac.dead_letters        LIST  dead-letter records (JSON), newest first
-- KEYS[5]   celeriac.dead_letter_counts  HASH  queue -> number of dead letters
-- KEYS[5+n] the list item n goes to (unused unless its mode is 'push')
--
-- ARGV[1]   the visibility timeout, ms
-- ARGV[2..] five per item n: tag, the unacked value read by the caller ('' if none),
--           mode, payload, queue
--           mode 'push': RPUSH payload (the stored envelope marked redelivered)
--           mode 'dead': the entry is unusable or unroutable; LPUSH payload (a
--                        dead-letter record) and count it for queue
--           mode 'drop': no unacked entry; only the index entry goes (as kombu)
--
-- An item acts only if the tag has no celeriac lease (celeriac deliveries are
-- restored by their lease, see restore_expired.lua), its delivery time is older than
-- the timeout on Redis's clock (TIME), and its unacked value is still the one read
-- (kombu's WATCH). It then removes unacked and unacked_index and moves the message
-- per mode.
--
-- Returns {restored, acted}: the number of messages put back in a queue, and of
-- items acted on (restored, dead-lettered or dropped).

local UNACKED, INDEX, LEASES, DEAD, DEAD_COUNTS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local TARGETS = 5

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local cutoff = (now_ms - tonumber(ARGV[1])) / 1000

local restored, acted = 0, 0
for n = 1, (#ARGV - 1) / 5 do
  local base = 1 + 5 * (n - 1)
  local tag, expected, mode = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  local payload, queue = ARGV[base + 4], ARGV[base + 5]
  local since = tonumber(redis.call('ZSCORE', INDEX, tag))
  if since and since <= cutoff and not redis.call('ZSCORE', LEASES, tag)
      and (redis.call('HGET', UNACKED, tag) or '') == expected then
    redis.call('HDEL', UNACKED, tag)
    redis.call('ZREM', INDEX, tag)
    acted = acted + 1
    if mode == 'push' then
      redis.call('RPUSH', KEYS[TARGETS + n], payload)
      restored = restored + 1
    elseif mode == 'dead' then
      redis.call('LPUSH', DEAD, payload)
      redis.call('HINCRBY', DEAD_COUNTS, queue, 1)
    end
  end
end
return { restored, acted }
