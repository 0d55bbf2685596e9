-- ack.lua: acknowledge deliveries: their messages are gone (kombu's ack: HDEL
-- unacked + ZREM unacked_index, plus celeriac's lease).
--
-- KEYS[1] unacked          HASH  hold -> JSON [envelope, exchange, routing_key]
-- KEYS[2] unacked_index    ZSET  hold -> delivery time, Unix seconds
-- KEYS[3] celeriac.leases  ZSET  hold -> lease deadline, Unix ms
--
-- ARGV    the hold ids of the deliveries (at most 1000)
--
-- A hold id names one delivery (claim.lua never reuses one), so an ack of a
-- delivery that ended otherwise (its lease lapsed and it was restored, a kombu
-- scan restored it) finds nothing and changes nothing.
--
-- Returns the number of messages acknowledged.

if #ARGV == 0 then return 0 end
local done = redis.call('HDEL', KEYS[1], unpack(ARGV))
redis.call('ZREM', KEYS[2], unpack(ARGV))
redis.call('ZREM', KEYS[3], unpack(ARGV))
return done
