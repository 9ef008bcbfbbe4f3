"""The Lua scripts of the Redis broker: each runs atomically on the server (see ``redis.py``).

Keys, all under the broker's prefix ``p``: ``p epoch`` (string), ``p position`` (counter),
``p log`` (the global stream, every event, ids ``{position}-0``), ``p t:{topic}`` (one stream per
topic, same ids), ``p trimmed`` (hash: topic -> newest position retention dropped from it),
``p log_trimmed`` (newest position dropped from the log), ``p expired_through`` (topics
whose history is entirely gone, folded into one watermark; ``p jobs_expired_through`` for job
topics, so ordinary topics expiring never reset a job's stream) and ``p done`` (sorted set:
terminal job topics by the time their history may go), ``p epoch_from`` (the log entry after
which the current epoch's events begin, when it replaced a history that lost events: X8).
"""

from __future__ import annotations

# ARGV: prefix, epoch, per-topic cap, log cap, job grace (ms), now (ms),
#       then five per event: topic, type, data, ts, terminal ("1" or "0").
PUBLISH = """
local p = ARGV[1]
if redis.call('GET', p .. 'epoch') ~= ARGV[2] then return redis.error_reply('JOBCAST_EPOCH') end
local cap, logcap = tonumber(ARGV[3]), tonumber(ARGV[4])
local log = p .. 'log'
local function keep(key, limit, mark_topic)
  local len = redis.call('XLEN', key)
  if len >= limit then
    local old = redis.call('XRANGE', key, '-', '+', 'COUNT', len - limit + 1)
    local newest = string.match(old[#old][1], '^%d+')
    if mark_topic then redis.call('HSET', p .. 'trimmed', mark_topic, newest)
    else redis.call('SET', p .. 'log_trimmed', newest) end
    redis.call('XTRIM', key, 'MAXLEN', limit - 1)
  end
end
local positions = {}
for i = 7, #ARGV, 5 do
  local topic = ARGV[i]
  local pos = redis.call('INCR', p .. 'position')
  local id = pos .. '-0'
  keep(log, logcap, nil)
  redis.call('XADD', log, id, 'e', ARGV[2], 't', topic, 'y', ARGV[i + 1], 'd', ARGV[i + 2],
             's', ARGV[i + 3])
  local tk = p .. 't:' .. topic
  keep(tk, cap, topic)
  redis.call('XADD', tk, id, 'y', ARGV[i + 1], 'd', ARGV[i + 2], 's', ARGV[i + 3])
  if ARGV[i + 4] == '1' then
    redis.call('ZADD', p .. 'done', tonumber(ARGV[6]) + tonumber(ARGV[5]), topic)
  end
  positions[#positions + 1] = pos
end
return positions
"""

# ARGV: prefix, cutoff (epoch seconds), now (ms), batch size. Returns the events dropped.
TRIM = """
local p = ARGV[1]
local cutoff, now, batch = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local log = p .. 'log'
local function fold(topic, tk, pos)
  local mark = 'expired_through'
  if string.sub(topic, 1, 5) == 'jobs/' then mark = 'jobs_expired_through' end
  mark = p .. mark
  redis.call('DEL', tk)
  redis.call('HDEL', p .. 'trimmed', topic)
  if pos > tonumber(redis.call('GET', mark) or '0') then redis.call('SET', mark, pos) end
end
local function field(fields, name)
  for j = 1, #fields, 2 do if fields[j] == name then return fields[j + 1] end end
end
local n = 0
while n < batch do
  local entry = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1]
  if not entry or tonumber(field(entry[2], 's')) >= cutoff then break end
  local pos = tonumber(string.match(entry[1], '^%d+'))
  local topic = field(entry[2], 't')
  redis.call('XDEL', log, entry[1])
  redis.call('SET', p .. 'log_trimmed', pos)
  if string.sub(topic, 1, 5) ~= 'jobs/' then  -- job topics wait for their end plus a grace
    local tk = p .. 't:' .. topic
    redis.call('XTRIM', tk, 'MINID', pos + 1)
    if redis.call('XLEN', tk) == 0 then fold(topic, tk, pos)
    else redis.call('HSET', p .. 'trimmed', topic, pos) end
  end
  n = n + 1
end
for _, topic in ipairs(redis.call('ZRANGEBYSCORE', p .. 'done', '-inf', now, 'LIMIT', 0, batch)) do
  local tk = p .. 't:' .. topic
  local last = redis.call('XREVRANGE', tk, '+', '-', 'COUNT', 1)[1]
  if last then fold(topic, tk, tonumber(string.match(last[1], '^%d+'))) end
  redis.call('ZREM', p .. 'done', topic)
  n = n + 1
end
return n
"""

# ARGV: prefix, the epoch seen, the new epoch. X8: replace the epoch only if it is still the
# one seen, and record where the new one begins; returns the epoch and where it begins.
NEW_EPOCH = """
local p = ARGV[1]
if redis.call('GET', p .. 'epoch') == ARGV[2] then
  local last = redis.call('XREVRANGE', p .. 'log', '+', '-', 'COUNT', 1)[1]
  redis.call('SET', p .. 'epoch_from', last and last[1] or '0-0')
  redis.call('SET', p .. 'epoch', ARGV[3])
end
return {redis.call('GET', p .. 'epoch'), redis.call('GET', p .. 'epoch_from') or '0-0'}
"""
