-- renew.lua: extend the leases of held deliveries to now + ARGV[1] ms, and move
-- their kombu delivery time to now, so kombu's visibility-timeout scan (Python's or
-- celeriac's) never sees a message a live celeriac consumer holds as old.
--
-- KEYS[1] unacked_index     ZSET  hold -> delivery time, Unix seconds
-- KEYS[2] celeriac.leases   ZSET  hold -> lease deadline, Unix ms
--
-- ARGV[1]   lease, ms
-- ARGV[2..] the hold ids of the deliveries (at most 1000)
--
-- Acts on a hold only while it is held: in unacked_index and in the leases (a
-- delivery restored by its lapsed lease or by a kombu scan is gone from both or
-- one). Times are Redis's clock (TIME).
--
-- Returns the number of leases renewed.

local INDEX, LEASES = KEYS[1], KEYS[2]

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local now_s = time[1] .. '.' .. string.format('%06d', tonumber(time[2]))
local deadline = now_ms + tonumber(ARGV[1])

local holds = {}
for i = 2, #ARGV do
  holds[#holds + 1] = ARGV[i]
end
if #holds == 0 then return 0 end
local since = redis.call('ZMSCORE', INDEX, unpack(holds))
local leases = redis.call('ZMSCORE', LEASES, unpack(holds))
local new_leases, new_index = {}, {}
for n = 1, #holds do
  if since[n] and leases[n] then
    new_leases[#new_leases + 1] = deadline
    new_leases[#new_leases + 1] = holds[n]
    new_index[#new_index + 1] = now_s
    new_index[#new_index + 1] = holds[n]
  end
end
if #new_leases > 0 then
  redis.call('ZADD', LEASES, unpack(new_leases))
  redis.call('ZADD', INDEX, unpack(new_index))
end
return #new_leases / 2
