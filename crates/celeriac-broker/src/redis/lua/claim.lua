-- claim.lua: take up to ARGV[1] messages from queue lists and record each one as
-- held, in one atomic step (kombu's ack emulation plus celeriac's lease).
--
-- KEYS[1]   unacked                      HASH   hold -> JSON [envelope, "", queue]
-- KEYS[2]   unacked_index                ZSET   hold -> delivery time, Unix seconds (float)
-- KEYS[3]   celeriac.leases              ZSET   hold -> lease deadline, Unix ms
-- KEYS[4]   celeriac.lost_claim:<claim>  STRING set by a client that lost this call's
--                                               reply: the call must do nothing
-- KEYS[5]   celeriac.dead_letters        LIST   dead-letter records (JSON), newest first
-- KEYS[6]   celeriac.dead_letter_counts  HASH   queue -> number of dead letters
-- KEYS[6+i] the queue lists, in the order to take from them
--
-- ARGV[1]   most messages to hold (at most 1000: a claim's holds are numbered
--           claim * 1000 + 1..n, and Lua's unpack limits a batch)
-- ARGV[2]   lease, ms
-- ARGV[3]   this call's claim number (random, below 2^43); it also prefixes the ids
--           of dead letters
-- ARGV[3+i] the queue of KEYS[6 + i] as a JSON string (quotes included)
--
-- Elements are taken from the tail of each list (RPOP: oldest first). Each one that
-- looks like a JSON object (first byte '{', last '}', blanks aside) is held under
-- the hold id claim * 1000 + k (k = 1, 2, ... in the order taken): HSET unacked
-- (kombu's entry: the element verbatim, the anonymous exchange and the queue it was
-- taken from, so any kombu restore puts it back into that queue), ZADD unacked_index
-- now, ZADD leases now + lease. The envelope is not read here: the client decodes
-- every element it receives and dead-letters one that does not decode
-- (dead_letter.lua); the delivery count travels in the envelope (see the module
-- docs). Any other element is moved to the dead letters with the reason (never
-- returned, never dropped); at most 100 per call. "now" is Redis's clock (TIME), so
-- clock skew between hosts cannot end a lease early.
--
-- Returns a flat array, two entries per held message in the order taken: list
-- index i (of KEYS[6 + i]) and the element.

local UNACKED, INDEX, LEASES, LOST = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local DEAD, DEAD_COUNTS = KEYS[5], KEYS[6]
local LISTS = 6
local MAX_DEAD = 100

local max = tonumber(ARGV[1])
local lease_ms = tonumber(ARGV[2])
local claim = ARGV[3]

-- The client gave this call up (its reply was lost) and released what it held:
-- running now, after that, would hold messages nobody will ever see.
if redis.call('EXISTS', LOST) == 1 then
  return {}
end

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local now_s = time[1] .. '.' .. string.format('%06d', tonumber(time[2]))
local deadline = now_ms + lease_ms

local B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local function base64(data)
  local out = {}
  for i = 1, #data, 3 do
    local a, b, c = string.byte(data, i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local s1 = math.floor(n / 262144) % 64 + 1
    local s2 = math.floor(n / 4096) % 64 + 1
    local s3 = math.floor(n / 64) % 64 + 1
    local s4 = n % 64 + 1
    out[#out + 1] = string.sub(B64, s1, s1) .. string.sub(B64, s2, s2)
      .. (b and string.sub(B64, s3, s3) or '=') .. (c and string.sub(B64, s4, s4) or '=')
  end
  return table.concat(out)
end

local dead = 0

local function dead_letter(quoted_queue, raw, reason)
  dead = dead + 1
  local ok, queue = pcall(cjson.decode, quoted_queue)
  if not ok or type(queue) ~= 'string' then queue = quoted_queue end
  redis.call('LPUSH', DEAD, cjson.encode({
    id = claim .. '-' .. dead,
    queue = queue,
    reason = reason,
    at = now_ms,
    payload_base64 = base64(raw),
  }))
  redis.call('HINCRBY', DEAD_COUNTS, queue, 1)
end

-- Whether an element can be a JSON object: '{' first and '}' last (as kombu and
-- celeriac write them), or so with blanks around.
local function object_like(raw)
  if string.byte(raw, 1) == 123 and string.byte(raw, -1) == 125 then return true end
  return string.find(raw, '^%s*{') ~= nil and string.find(raw, '}%s*$') ~= nil
end

local first = tonumber(claim) * 1000
local n = 0
local unacked, index, leases, out = {}, {}, {}, {}

for i = 1, #KEYS - LISTS do
  local quoted = ARGV[3 + i]
  local tail = ',"",' .. quoted .. ']'
  while n < max and dead < MAX_DEAD do
    local want = max - n
    local items = redis.call('RPOP', KEYS[LISTS + i], want)
    if not items then break end
    for _, raw in ipairs(items) do
      if object_like(raw) then
        n = n + 1
        local hold = string.format('%d', first + n)
        local j = 2 * n
        unacked[j - 1], unacked[j] = hold, '[' .. raw .. tail
        index[j - 1], index[j] = now_s, hold
        leases[j - 1], leases[j] = deadline, hold
        out[j - 1], out[j] = i, raw
      else
        dead_letter(quoted, raw, 'not a kombu envelope: not a JSON object')
      end
    end
    if #items < want then break end
  end
  if n >= max or dead >= MAX_DEAD then break end
end

if n == 0 then
  return {}
end

-- One command per structure for the whole batch.
redis.call('HSET', UNACKED, unpack(unacked))
redis.call('ZADD', INDEX, unpack(index))
redis.call('ZADD', LEASES, unpack(leases))
return out
