-- Extends the chord dispatch claim while its holder still owns it, or takes a
-- lapsed claim back while the chord's size key still exists.
-- KEYS[1] K.c claim   KEYS[2] K.s size
-- ARGV[1] claim token ARGV[2] expiry in seconds
-- Returns 1 when the caller holds the claim afterwards, else 0.
local claim, size_key = KEYS[1], KEYS[2]
local token, expires = ARGV[1], tonumber(ARGV[2])
local holder = redis.call('GET', claim)
if holder == token then
  redis.call('EXPIRE', claim, expires)
  return 1
end
if not holder and redis.call('EXISTS', size_key) == 1 then
  if redis.call('SET', claim, token, 'NX', 'EX', expires) then
    return 1
  end
end
return 0
