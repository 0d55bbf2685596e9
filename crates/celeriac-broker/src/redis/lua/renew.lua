-- renew.lua: extend the leases of held deliveries to now + ARGV[1] ms, and move
-- their kombu delivery time to now, so kombu's visibility-timeout scan (Python's or
-- celeriac's) never sees a message a live celeriac consumer holds as old.
--
-- KEYS[1] unacked_index     ZSET  tag -> delivery time, Unix seconds
-- KEYS[2] celeriac.leases   ZSET  tag -> lease deadline, Unix ms
-- KEYS[3] celeriac.holders  HASH  tag -> "<token> <delivery count> <queue>"
--
-- ARGV[1]  lease, ms
-- ARGV[2..] pairs: tag, token; at most 1000 pairs
--
-- A pair acts only while that delivery holds the message (see ack.lua); stale pairs
-- change nothing. Times are Redis's clock (TIME).
--
-- Returns the number of leases renewed.

local INDEX, LEASES, HOLDERS = KEYS[1], KEYS[2], KEYS[3]

-- Whether the delivery with `token` holds the message (see ack.lua).
local function holds(holder, token, since, lease)
  if not holder or string.match(holder, '^(%d+) ') ~= token then return false end
  since, lease = tonumber(since), tonumber(lease)
  return since ~= nil and lease ~= nil and since * 1000 <= lease + 1
end

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local now_s = time[1] .. '.' .. string.format('%06d', tonumber(time[2]))
local deadline = now_ms + tonumber(ARGV[1])

local tags, tokens = {}, {}
for i = 2, #ARGV, 2 do
  tags[#tags + 1] = ARGV[i]
  tokens[#tokens + 1] = ARGV[i + 1]
end
if #tags == 0 then return 0 end
local holders = redis.call('HMGET', HOLDERS, unpack(tags))
local since = redis.call('ZMSCORE', INDEX, unpack(tags))
local leases = redis.call('ZMSCORE', LEASES, unpack(tags))
local new_leases, new_index = {}, {}
for n = 1, #tags do
  if holds(holders[n], tokens[n], since[n], leases[n]) then
    new_leases[#new_leases + 1] = deadline
    new_leases[#new_leases + 1] = tags[n]
    new_index[#new_index + 1] = now_s
    new_index[#new_index + 1] = tags[n]
  end
end
if #new_leases > 0 then
  redis.call('ZADD', LEASES, unpack(new_leases))
  redis.call('ZADD', INDEX, 'XX', unpack(new_index))
end
return #new_leases / 2
