-- store.lua: stores task metas in Celery's Redis format, never replacing a SUCCESS.
--
-- Contract
--   KEYS[i]    celery-task-meta-<task id> of meta i, with the global key prefix
--   ARGV[1]    expiry in milliseconds; "0" = never (SET without an expiry)
--   ARGV[i+1]  the task meta JSON for KEYS[i]: exactly the bytes that are stored and
--              published (Python clients parse both)
--   returns    an array with one integer per key: 1 = stored and published,
--              0 = a SUCCESS was already stored and was kept (nothing written)
--
-- For each key, atomically with respect to every other client:
--   GET KEYS[i]; if it holds a meta whose status is SUCCESS, keep it (Celery's
--   dedupe guard: a redelivered task that already succeeded cannot turn into a
--   FAILURE). Otherwise write it as Celery's `MULTI; SETEX key ttl json;
--   PUBLISH key json; EXEC` does: SETEX when the expiry is whole seconds,
--   PSETEX for sub-second expiries, SET without an expiry, then PUBLISH the same
--   bytes on the channel named like the key.
-- A current value that is not a JSON object (corrupt, compressed) is replaced.
local ttl = tonumber(ARGV[1])
if ttl == nil or ttl < 0 then
  return redis.error_reply('ERR store.lua: ARGV[1] must be an expiry in milliseconds')
end
if #ARGV ~= #KEYS + 1 then
  return redis.error_reply('ERR store.lua: one meta per key expected')
end

local outcome = {}
for i, key in ipairs(KEYS) do
  local value = ARGV[i + 1]
  local current = redis.call('GET', key)
  local keep = false
  if current then
    local ok, meta = pcall(cjson.decode, current)
    keep = ok and type(meta) == 'table' and meta['status'] == 'SUCCESS'
  end
  if keep then
    outcome[i] = 0
  else
    if ttl == 0 then
      redis.call('SET', key, value)
    elseif ttl % 1000 == 0 then
      redis.call('SETEX', key, string.format('%d', ttl / 1000), value)
    else
      redis.call('PSETEX', key, string.format('%d', ttl), value)
    end
    redis.call('PUBLISH', key, value)
    outcome[i] = 1
  end
end
return outcome
