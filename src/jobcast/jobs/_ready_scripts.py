"""The Lua scripts of ``ready_queue.py`` (decisions Q1-Q6 there): Redis runs each one whole,
so no two workers see one job or one slot free. The keys are the queue's ``prefix`` (its SAQ
namespace) plus ``ready:{kind}``, ``ready-kinds``, ``parked:{owner}``, ``parked-owners``,
``wake``, and the leases of ``run_limits.py`` (``kind-limit:{kind}``, ``owner-limit:{owner}``).
Every script's first two arguments are the prefix and the wake list's length.
"""

from __future__ import annotations

_COMMON = """
local prefix = ARGV[1]
local function meta_of(record)
  local ok, job = pcall(cjson.decode, record)
  if not ok or type(job) ~= 'table' or type(job['meta']) ~= 'table' then return {} end
  return job['meta']
end
local function text(value)
  if type(value) == 'string' then return value end
  return ''
end
local function make_ready(id, meta, score)
  local kind = text(meta['kind'])
  if score == nil then score = -(tonumber(meta['priority']) or 0) end
  redis.call('ZADD', prefix .. 'ready:' .. kind, score, id)
  redis.call('SADD', prefix .. 'ready-kinds', kind)
  redis.call('RPUSH', prefix .. 'wake', 1)
  redis.call('LTRIM', prefix .. 'wake', -tonumber(ARGV[2]), -1)
end
local function promote(incomplete, now)  -- jobs whose time came, to their kind's set
  local due = redis.call('ZRANGEBYSCORE', incomplete, 1, now)
  for _, id in ipairs(due) do
    redis.call('ZADD', incomplete, 0, id)
    local record = redis.call('GET', id)
    if record then make_ready(id, meta_of(record)) else redis.call('ZREM', incomplete, id) end
  end
  return due
end
"""

# KEYS: incomplete, job id, abort id. ARGV: prefix, wake max, record, scheduled.
ENQUEUE = (
    _COMMON
    + """
if redis.call('ZSCORE', KEYS[1], KEYS[2]) or redis.call('EXISTS', KEYS[3]) == 1 then
  return nil
end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[4], KEYS[2])
if tonumber(ARGV[4]) <= 0 then make_ready(KEYS[2], meta_of(ARGV[3])) end
return 1
"""
)

# KEYS: incomplete, job id. ARGV: prefix, wake max. A job scheduled for later, due now (Q7).
DUE_NOW = (
    _COMMON
    + """
local score = redis.call('ZSCORE', KEYS[1], KEYS[2])
if not score or tonumber(score) <= 0 then return 0 end
local record = redis.call('GET', KEYS[2])
if not record then return 0 end
redis.call('ZADD', KEYS[1], 0, KEYS[2])
make_ready(KEYS[2], meta_of(record))
return 1
"""
)

# KEYS: schedule lock, incomplete. ARGV: prefix, wake max, lock seconds, now.
SCHEDULE = (
    _COMMON
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return {} end
redis.call('SETEX', KEYS[1], ARGV[3], 1)
return promote(KEYS[2], ARGV[4])
"""
)

# KEYS: active, incomplete. ARGV: prefix, wake max, now, lease end, {kind: limit} as JSON,
# owner limit (0: none). Returns the job taken ('' if none) and the next job's time ('' if
# none waits).
TAKE = (
    _COMMON
    + """
local now = tonumber(ARGV[3])
promote(KEYS[2], ARGV[3])  -- Q5: a job is taken at its time, not at the next schedule
local upcoming = redis.call('ZRANGEBYSCORE', KEYS[2], 1, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local next_at = upcoming[2] or ''
local limits = cjson.decode(ARGV[5])
local owner_limit = tonumber(ARGV[6])
local function has_room(key, limit, id)  -- a lease the job still holds (swept) is room
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  return redis.call('ZCARD', key) < limit or (id and redis.call('ZSCORE', key, id))
end
local function owner_has_room(owner, id)
  return owner_limit == 0 or owner == ''
    or has_room(prefix .. 'owner-limit:' .. owner, owner_limit, id)
end
for _, owner in ipairs(redis.call('SMEMBERS', prefix .. 'parked-owners')) do  -- Q4
  local parked = prefix .. 'parked:' .. owner
  local count = redis.call('ZCARD', parked)
  if owner_limit > 0 then  -- as many as the owner has room for
    local leases = prefix .. 'owner-limit:' .. owner
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
    count = math.min(count, owner_limit - redis.call('ZCARD', leases))
  end
  if count > 0 then
    local entries = redis.call('ZPOPMIN', parked, count)
    for i = 1, #entries, 2 do
      local record = redis.call('GET', entries[i])
      if record then make_ready(entries[i], meta_of(record), entries[i + 1]) end
    end
  end
  if redis.call('EXISTS', parked) == 0 then
    redis.call('SREM', prefix .. 'parked-owners', owner)
  end
end
local best, best_score, best_kind, best_owner
for _, kind in ipairs(redis.call('SMEMBERS', prefix .. 'ready-kinds')) do
  local ready = prefix .. 'ready:' .. kind
  local limit = limits[kind]
  while true do
    local head = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
    if #head == 0 then
      redis.call('SREM', prefix .. 'ready-kinds', kind)
      break
    end
    local id, score = head[1], tonumber(head[2])
    if limit ~= nil and not has_room(prefix .. 'kind-limit:' .. kind, limit, id) then
      break  -- the kind is full: its jobs keep their places
    end
    local owner = ''
    if owner_limit > 0 then owner = text(meta_of(redis.call('GET', id) or '')['owner']) end
    if owner_has_room(owner, id) then
      if best == nil or score < best_score or (score == best_score and id < best) then
        best, best_score, best_kind, best_owner = id, score, kind, owner
      end
      break
    end
    redis.call('ZREM', ready, id)  -- Q4: parked with its place
    redis.call('ZADD', prefix .. 'parked:' .. owner, score, id)
    redis.call('SADD', prefix .. 'parked-owners', owner)
  end
end
if best == nil then  -- Q6
  local legacy = redis.call('LPOP', prefix .. 'queued')
  if legacy then
    redis.call('RPUSH', KEYS[1], legacy)
    return {legacy, next_at}
  end
  redis.call('DEL', prefix .. 'wake')  -- Q5: nothing can be taken, so every token is stale
  return {'', next_at}
end
redis.call('ZREM', prefix .. 'ready:' .. best_kind, best)
if limits[best_kind] ~= nil then
  redis.call('ZADD', prefix .. 'kind-limit:' .. best_kind, ARGV[4], best)
end
if best_owner ~= '' then
  redis.call('ZADD', prefix .. 'owner-limit:' .. best_owner, ARGV[4], best)
end
redis.call('RPUSH', KEYS[1], best)
return {best, next_at}
"""
)

# KEYS: active, incomplete, job id, abort id. ARGV: prefix, wake max, record, abort seconds,
# error, status, kind, owner. 1: it was waiting (no worker has it), 0: a worker runs it.
ABORT = (
    _COMMON
    + """
local removed = redis.call('ZREM', prefix .. 'ready:' .. ARGV[7], KEYS[3])
  + redis.call('ZREM', prefix .. 'parked:' .. ARGV[8], KEYS[3])
  + redis.call('LREM', prefix .. 'queued', 0, KEYS[3])
local scheduled = redis.call('ZREM', KEYS[2], KEYS[3])
local running = redis.call('LREM', KEYS[1], 0, KEYS[3])
redis.call('SET', KEYS[3], ARGV[3])
redis.call('SETEX', KEYS[4], ARGV[4], ARGV[5])
redis.call('PUBLISH', KEYS[3], ARGV[6])
if removed > 0 or (scheduled > 0 and running == 0) then return 1 end
return 0
"""
)
