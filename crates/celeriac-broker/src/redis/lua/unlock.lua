-- unlock.lua: release a lock only if we still own it (kombu's unacked_mutex release).
--
-- KEYS[1] the lock (STRING holding its owner's token)
-- ARGV[1] our token
--
-- Returns 1 if the lock was ours and is released, else 0.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
