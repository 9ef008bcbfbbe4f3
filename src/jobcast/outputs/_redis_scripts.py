"""The Lua scripts of the Redis stream backend: each write's checks and effects run atomically.

Keys, under the deployment's prefix ``P``: ``P ds:m:{path}`` the stream's metadata (a hash),
``P ds:z:{incarnation}`` the chunk starts (a sorted set), ``P ds:d:{incarnation}`` the chunks
(a hash, start -> bytes), ``P ds:p:{incarnation}`` producers (id -> "epoch seq"),
``P ds:next`` the incarnation counter, ``P ds:paths`` every path (for listings). Every write
publishes its wake message (the writing instance's id and the path: redis.E2) on
``P ds:wake`` inside the script, so every instance wakes its readers.
"""

from __future__ import annotations

# Shared helpers: the stream's hash as a table, its expiry, and removing an incarnation.
_HELPERS = """
local function load(key)
  local raw = redis.call('HGETALL', key)
  if #raw == 0 then return nil end
  local h = {}
  for i = 1, #raw, 2 do h[raw[i]] = raw[i + 1] end
  return h
end
local function expired(h, now)
  if h.expires_at ~= '' and now >= tonumber(h.expires_at) then return true end
  return h.ttl ~= '' and now >= tonumber(h.accessed_at) + tonumber(h.ttl)
end
local function remove(prefix, key, h)
  local inc = h.incarnation
  redis.call('DEL', key, prefix .. 'ds:z:' .. inc, prefix .. 'ds:d:' .. inc,
    prefix .. 'ds:p:' .. inc)
  redis.call('ZREM', prefix .. 'ds:paths', h.path)
end
local function live(prefix, key, now)
  local h = load(key)
  if h and expired(h, now) then
    remove(prefix, key, h)
    return nil
  end
  return h
end
-- Stream-Seq compares byte-wise (Lua's own < follows the server's locale).
local function at_or_before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a <= #b
end
local function store(prefix, h, data)
  if #data > 0 then
    local start = h.tail
    redis.call('ZADD', prefix .. 'ds:z:' .. h.incarnation, tonumber(start), start)
    redis.call('HSET', prefix .. 'ds:d:' .. h.incarnation, start, data)
  end
end
"""

# KEYS: meta. ARGV: prefix, path, content_type, ttl, expires_at, closed, data, now, wake message.
CREATE = (
    _HELPERS
    + """
local prefix, path = ARGV[1], ARGV[2]
local now = tonumber(ARGV[8])
local h = live(prefix, KEYS[1], now)
if h then return {'exists'} end
local inc = redis.call('INCR', prefix .. 'ds:next')
h = {incarnation = tostring(inc), tail = '0'}
store(prefix, h, ARGV[7])
redis.call('HSET', KEYS[1], 'incarnation', inc, 'path', path, 'content_type', ARGV[3],
  'ttl', ARGV[4], 'expires_at', ARGV[5], 'closed', ARGV[6], 'tail', #ARGV[7],
  'last_seq', '', 'closed_by', '', 'accessed_at', ARGV[8])
redis.call('ZADD', prefix .. 'ds:paths', 0, path)
redis.call('PUBLISH', prefix .. 'ds:wake', ARGV[9])
return {'created'}
"""
)

# KEYS: meta. ARGV: prefix, path, now, data, refusal ('' or why the body was refused), seq,
# producer id ('' for none), epoch, producer seq, close ('1'/'0'), max bytes, stored ('1': a
# job's framed write, dropped when the stream is closed), wake message.
APPEND = (
    _HELPERS
    + """
local prefix, path, now, data = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local refusal, seq, pid = ARGV[5], ARGV[6], ARGV[7]
local epoch, pseq = tonumber(ARGV[8]), tonumber(ARGV[9])
local close, max_bytes, stored = ARGV[10] == '1', tonumber(ARGV[11]), ARGV[12] == '1'
local h = live(prefix, KEYS[1], now)
if not h then return {'notfound'} end
local state = {h.incarnation, h.tail}
if h.closed == '1' then
  if stored then return {'ignored'} end
  local tuple = pid .. ' ' .. ARGV[8] .. ' ' .. ARGV[9]
  if pid ~= '' and h.closed_by == tuple then
    return {'duplicate', state[1], state[2], ARGV[9], '1'}
  end
  if #data == 0 and close and pid == '' then
    return {'duplicate', state[1], state[2], '', '1'}
  end
  return {'closed', state[1], state[2]}
end
if refusal ~= '' then return {'refused', refusal} end
local producers = prefix .. 'ds:p:' .. h.incarnation
if pid ~= '' then
  local current = redis.call('HGET', producers, pid)
  local e, last = nil, nil
  if current then
    local space = string.find(current, ' ')
    e, last = tonumber(string.sub(current, 1, space - 1)), tonumber(string.sub(current, space + 1))
  end
  if not current or epoch > e then
    if pseq ~= 0 then
      if not current then return {'gap', '0', ARGV[9]} end
      return {'newepoch'}
    end
  elseif epoch < e then
    return {'stale', tostring(e)}
  elseif pseq <= last then
    return {'duplicate', state[1], state[2], tostring(last), '0'}
  elseif pseq ~= last + 1 then
    return {'gap', tostring(last + 1), ARGV[9]}
  end
end
if seq ~= '' and h.last_seq ~= '' and at_or_before(seq, h.last_seq) then
  return {'seq', h.last_seq}
end
local tail = tonumber(h.tail) + #data
if tail > max_bytes then return {'toolarge', tostring(tail)} end
store(prefix, h, data)
redis.call('HSET', KEYS[1], 'tail', tail, 'accessed_at', ARGV[3])
if seq ~= '' then redis.call('HSET', KEYS[1], 'last_seq', seq) end
if pid ~= '' then redis.call('HSET', producers, pid, ARGV[8] .. ' ' .. ARGV[9]) end
if close then
  redis.call('HSET', KEYS[1], 'closed', '1')
  if pid ~= '' then
    redis.call('HSET', KEYS[1], 'closed_by', pid .. ' ' .. ARGV[8] .. ' ' .. ARGV[9])
  end
end
redis.call('PUBLISH', prefix .. 'ds:wake', ARGV[13])
return {'ok', state[1], tostring(tail), close and '1' or h.closed}
"""
)

# KEYS: meta. ARGV: prefix, path, now, touch ('1': a read, which extends a TTL).
LOAD = (
    _HELPERS
    + """
local h = live(ARGV[1], KEYS[1], tonumber(ARGV[3]))
if not h then return nil end
if ARGV[4] == '1' and h.ttl ~= '' then redis.call('HSET', KEYS[1], 'accessed_at', ARGV[3]) end
return redis.call('HGETALL', KEYS[1])
"""
)

# KEYS: meta. ARGV: prefix, path, now, wake message.
DELETE = (
    _HELPERS
    + """
local h = live(ARGV[1], KEYS[1], tonumber(ARGV[3]))
if not h then return 0 end
remove(ARGV[1], KEYS[1], h)
redis.call('PUBLISH', ARGV[1] .. 'ds:wake', ARGV[4])
return 1
"""
)
