-- purge.lua: delete every ready message of one queue, atomically.
--
-- KEYS    the queue's lists (one per priority step)
--
-- Held messages (in unacked) are not touched.
--
-- Returns the number of messages deleted.

local purged = 0
for _, key in ipairs(KEYS) do
  purged = purged + redis.call('LLEN', key)
  redis.call('DEL', key)
end
return purged
