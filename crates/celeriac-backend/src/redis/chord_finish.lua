-- Deletes a dispatched chord's bookkeeping if the caller still holds the claim,
-- and marks the chord "done" so late duplicates of header tasks do nothing.
-- KEYS[1] K.c claim  KEYS[2] K.j parts  KEYS[3] K.t diff  KEYS[4] K.s size  KEYS[5] K.d seen
-- ARGV[1] claim token  ARGV[2] expiry of the done marker in seconds
-- Returns 1 when cleaned up, 0 when the claim was lost.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
local done_expires = tonumber(ARGV[2])
if done_expires > 0 then
  redis.call('SET', KEYS[1], 'done', 'EX', done_expires)
end
return 1
