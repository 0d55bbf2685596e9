-- ack.lua: acknowledge deliveries: the messages are gone (kombu's ack: ZREM
-- unacked_index + HDEL unacked, plus celeriac's lease and holder entries).
--
-- KEYS[1] unacked              HASH  tag -> JSON [envelope, exchange, routing_key]
-- KEYS[2] unacked_index        ZSET  tag -> delivery time, Unix seconds
-- KEYS[3] celeriac.leases      ZSET  tag -> lease deadline, Unix ms
-- KEYS[4] celeriac.holders     HASH  tag -> "<token> <delivery count> <queue>"
-- KEYS[5] celeriac.deliveries  HASH  tag -> delivery count of its last ended delivery
--
-- ARGV    pairs: tag, token (the delivery being acknowledged); at most 1000 pairs
--
-- A pair acts only while that delivery holds the message: holders[tag] carries the
-- token, and the message is still in unacked_index no later than its lease (a later
-- delivery time means a kombu consumer took it again after a kombu restore). Any
-- other pair is stale and changes nothing.
--
-- Returns the number of messages acknowledged.

local UNACKED, INDEX, LEASES, HOLDERS, DELIVERIES = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

-- Whether the delivery with `token` holds the message (see above).
local function holds(holder, token, since, lease)
  if not holder or string.match(holder, '^(%d+) ') ~= token then return false end
  since, lease = tonumber(since), tonumber(lease)
  return since ~= nil and lease ~= nil and since * 1000 <= lease + 1
end

local tags, tokens = {}, {}
for i = 1, #ARGV, 2 do
  tags[#tags + 1] = ARGV[i]
  tokens[#tokens + 1] = ARGV[i + 1]
end
if #tags == 0 then return 0 end
local holders = redis.call('HMGET', HOLDERS, unpack(tags))
local since = redis.call('ZMSCORE', INDEX, unpack(tags))
local leases = redis.call('ZMSCORE', LEASES, unpack(tags))
local done = {}
for n = 1, #tags do
  if holds(holders[n], tokens[n], since[n], leases[n]) then
    done[#done + 1] = tags[n]
  end
end
if #done > 0 then
  redis.call('HDEL', UNACKED, unpack(done))
  redis.call('ZREM', INDEX, unpack(done))
  redis.call('ZREM', LEASES, unpack(done))
  redis.call('HDEL', HOLDERS, unpack(done))
  redis.call('HDEL', DELIVERIES, unpack(done))
end
return #done
