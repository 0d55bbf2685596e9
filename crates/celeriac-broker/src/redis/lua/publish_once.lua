-- publish_once.lua: publish a batch unless its key was published within the window
-- (idempotent publish: beat re-sending a run its dead replica may have sent).
--
-- KEYS[1]      the publish-once marker (STRING, expires after the window)
-- KEYS[2]      the SET of known queue names (celeriac.queues)
-- KEYS[3..]    the lists to push to, one per pushed element
-- ARGV[1]      the window in milliseconds
-- ARGV[2]      the number of queue names that follow
-- ARGV[3..]    the queue names, then the elements (one per list in KEYS[3..])
--
-- Returns 1 when the elements were pushed now, 0 when the marker was already set
-- (nothing pushed).

if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return 0
end
local queue_count = tonumber(ARGV[2])
for i = 1, queue_count do
  redis.call('SADD', KEYS[2], ARGV[2 + i])
end
for i = 3, #KEYS do
  redis.call('LPUSH', KEYS[i], ARGV[2 + queue_count + i - 2])
end
return 1
