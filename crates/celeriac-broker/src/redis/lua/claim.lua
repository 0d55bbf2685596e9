-- claim.lua: take up to ARGV[1] messages from queue lists and record each one as
-- held, in one atomic step (kombu's ack emulation plus celeriac's lease).
--
-- KEYS[1]   unacked                      HASH   tag -> JSON [envelope, exchange, routing_key]
-- KEYS[2]   unacked_index                ZSET   tag -> delivery time, Unix seconds (float)
-- KEYS[3]   celeriac.leases              ZSET   tag -> lease deadline, Unix ms
-- KEYS[4]   celeriac.holders             HASH   tag -> "<token> <delivery count> <queue>"
-- KEYS[5]   celeriac.deliveries          HASH   tag -> delivery count of its last ended delivery
-- KEYS[6]   celeriac.lost_claim:<claim>  STRING set by a client that lost this call's
--                                               reply: the call must do nothing
-- KEYS[7]   celeriac.dead_letters        LIST   dead-letter records (JSON), newest first
-- KEYS[8]   celeriac.dead_letter_counts  HASH   queue -> number of dead letters
-- KEYS[9..] the queue lists, in the order to take from them
--
-- ARGV[1]   most messages to hold (at most 1000: Lua's unpack limits a batch)
-- ARGV[2]   lease, ms
-- ARGV[3]   this call's claim number (random, below 2^43): the delivery tokens are
--           claim * 1000 + 1..n, and it prefixes the ids of dead letters
-- ARGV[4]   0, or i when the caller already popped ARGV[5] from KEYS[8 + i] (BRPOP);
--           that element is recorded first and counts towards ARGV[1]
-- ARGV[5]   the popped element ('' when ARGV[4] is 0)
-- ARGV[5+i] the queue name of KEYS[8 + i]
--
-- Elements are taken from the tail of each list (RPOP: oldest first). A kombu
-- envelope (a JSON object with body and properties.delivery_tag) is recorded as held
-- (read without decoding it when it has the shape kombu and celeriac write, see
-- scan(); decoded with cjson otherwise):
-- HSET unacked (the element verbatim, with delivery_info's exchange and routing key,
-- as kombu writes it), ZADD unacked_index now, ZADD leases now + lease, HSET holders
-- with a token of this claim. "now" is Redis's clock (TIME), so clock skew between hosts
-- cannot end a lease early. The delivery count is celeriac.deliveries[tag] + 1 when
-- that exists, else 2 if delivery_info.redelivered is true, else 1. Any other element
-- is moved to the dead letters with the reason (never returned, never dropped);
-- at most 100 per call.
--
-- Returns a flat array, five entries per held message in the order taken:
-- list index i (of KEYS[8 + i]), the element, its delivery tag, its token, its
-- delivery count.

local UNACKED, INDEX, LEASES, HOLDERS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local DELIVERIES, LOST, DEAD, DEAD_COUNTS = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local LISTS = 8
local MAX_DEAD = 100

local max = tonumber(ARGV[1])
local lease_ms = tonumber(ARGV[2])
local dead_prefix = ARGV[3]
local popped = tonumber(ARGV[4])

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

local function dead_letter(queue, raw, reason)
  dead = dead + 1
  redis.call('LPUSH', DEAD, cjson.encode({
    id = dead_prefix .. '-' .. dead,
    queue = queue,
    reason = reason,
    at = now_ms,
    payload_base64 = base64(raw),
  }))
  redis.call('HINCRBY', DEAD_COUNTS, queue, 1)
end

-- The fields claim needs, read from the envelope's text without decoding all of it
-- (cjson.decode of a whole envelope is a quarter of this script's time): the
-- delivery tag and delivery_info's exchange, routing key and redelivered flag. It
-- only answers for the shape kombu and celeriac write: an object whose keys
-- "delivery_tag" and "delivery_info" each occur once (a name inside a JSON string
-- cannot match: there every '"' is escaped), a tag without escapes, a delivery_info
-- object that decodes alone; anything else returns nil and takes the full decode. It
-- does not check that the whole text is JSON: the consumer decodes every envelope
-- it receives, dead-letters what does not decode and checks the tag it was given.
-- Where the value of the key `prefix .. needle` (say `"delivery` .. `_tag"`) starts
-- in the text (after the key, blanks and ':'): nil when the key is missing, false
-- when it occurs more than once. The search runs on `needle`, which starts with '_'
-- (rare in an envelope, absent from base64 bodies), and checks `prefix` before each
-- hit: far fewer stops than a needle starting with '"', of which an envelope has
-- hundreds.
local function key_once(raw, needle, prefix)
  local plen = #prefix
  local found
  local init = 1
  while true do
    local first, last = string.find(raw, needle, init, true)
    if not first then break end
    if first > plen and string.sub(raw, first - plen, first - 1) == prefix then
      if found then return false end
      found = last
    end
    init = last + 1
  end
  if not found then return nil end
  return string.match(raw, '^%s*:%s*()', found + 1)
end

local DELIVERY, TAG, INFO = '"delivery', '_tag"', '_info"'

local function scan(raw)
  if string.byte(raw, 1) ~= 123 then return nil end -- '{'
  local at = key_once(raw, TAG, DELIVERY)
  if not at then return nil end
  local tag = string.match(raw, '^"([^"\\]+)"', at)
  if not tag then return nil end
  if not string.find(raw, '"body"', 1, true) or not string.find(raw, 'properties"', 1, true) then
    return nil
  end
  local exchange, routing_key, redelivered = '', nil, false
  at = key_once(raw, INFO, DELIVERY)
  if at == false then return nil end
  if at then
    local text = string.match(raw, '^%b{}', at)
    if not text then return nil end
    local ok, info = pcall(cjson.decode, text)
    if not ok or type(info) ~= 'table' then return nil end
    if type(info.exchange) == 'string' then exchange = info.exchange end
    if type(info.routing_key) == 'string' then routing_key = info.routing_key end
    redelivered = info.redelivered == true
  end
  return tag, exchange, routing_key, redelivered
end

-- A JSON string: plain quotes when nothing needs escaping, cjson otherwise; cached,
-- since the messages of one claim mostly share their exchange and routing key.
local quoted = {}
local function quote(text)
  local q = quoted[text]
  if q then return q end
  if string.find(text, '[%c"\\]') then q = cjson.encode(text) else q = '"' .. text .. '"' end
  quoted[text] = q
  return q
end

-- What is held, one array per field (no table per message).
local n = 0
local h_index, h_raw, h_tag, h_queue, h_redelivered, h_entry = {}, {}, {}, {}, {}, {}

local function hold(i, raw, tag, queue, exchange, routing_key, redelivered)
  n = n + 1
  h_index[n], h_raw[n], h_tag[n], h_queue[n], h_redelivered[n] = i, raw, tag, queue, redelivered
  h_entry[n] = '[' .. raw .. ',' .. quote(exchange) .. ',' .. quote(routing_key) .. ']'
end

local function take(i, raw)
  local queue = ARGV[5 + i]
  local tag, exchange, routing_key, redelivered = scan(raw)
  if tag then
    return hold(i, raw, tag, queue, exchange, routing_key or queue, redelivered)
  end
  local ok, message = pcall(cjson.decode, raw)
  if not ok then
    return dead_letter(queue, raw, 'not a kombu envelope: invalid JSON (' .. tostring(message) .. ')')
  end
  if type(message) ~= 'table' or message.body == nil or type(message.properties) ~= 'table' then
    return dead_letter(queue, raw, 'not a kombu envelope: expected a JSON object with body and properties')
  end
  local properties = message.properties
  tag = properties.delivery_tag
  if type(tag) ~= 'string' or tag == '' then
    return dead_letter(queue, raw, 'not a kombu envelope: properties.delivery_tag is missing')
  end
  exchange, routing_key, redelivered = '', queue, false
  local info = properties.delivery_info
  if type(info) == 'table' then
    if type(info.exchange) == 'string' then exchange = info.exchange end
    if type(info.routing_key) == 'string' then routing_key = info.routing_key end
    redelivered = info.redelivered == true
  end
  hold(i, raw, tag, queue, exchange, routing_key, redelivered)
end

if popped > 0 then
  take(popped, ARGV[5])
end
for i = 1, #KEYS - LISTS do
  while n < max and dead < MAX_DEAD do
    local want = max - n
    local items = redis.call('RPOP', KEYS[LISTS + i], want)
    if not items then break end
    for _, raw in ipairs(items) do
      take(i, raw)
    end
    if #items < want then break end
  end
  if n >= max or dead >= MAX_DEAD then break end
end

if n == 0 then
  return {}
end

-- One command per structure for the whole batch.
local previous = redis.call('HMGET', DELIVERIES, unpack(h_tag))
local first = tonumber(ARGV[3]) * 1000
local unacked, index, leases, holders, out = {}, {}, {}, {}, {}
for k = 1, n do
  local tag = h_tag[k]
  local count = 1
  if previous[k] then
    count = tonumber(previous[k]) + 1
  elseif h_redelivered[k] then
    count = 2
  end
  local token = string.format('%d', first + k)
  local j = 2 * k
  unacked[j - 1], unacked[j] = tag, h_entry[k]
  index[j - 1], index[j] = now_s, tag
  leases[j - 1], leases[j] = deadline, tag
  holders[j - 1], holders[j] = tag, token .. ' ' .. count .. ' ' .. h_queue[k]
  local o = 5 * k
  out[o - 4], out[o - 3], out[o - 2], out[o - 1], out[o] = h_index[k], h_raw[k], tag, token, count
end
redis.call('HSET', UNACKED, unpack(unacked))
redis.call('ZADD', INDEX, unpack(index))
redis.call('ZADD', LEASES, unpack(leases))
redis.call('HSET', HOLDERS, unpack(holders))
return out
