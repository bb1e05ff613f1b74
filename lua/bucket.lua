-- bucket.lua: the shared prelude of every bucket script (reserve, settle, grant, read, restore).
-- Not a script by itself: gateway/scripts.py prepends it to each script's text before registering it, because
-- EVAL scripts cannot share code. It defines NOW, SCHEDULE and local functions; the script after it does the work.
--
-- A bucket is a hash with fields
--   ps, pe      current period [start, end) in epoch seconds
--   carried     tokens carried over into this period
--   granted     tokens granted by the convenor this period
--   used        weighted tokens settled this period
--   hits        requests refused for quota this period
--   fresh       present (the Redis time it was created) while the bucket has not been reconciled with Postgres
-- remaining = limit + carried + granted - used; limit comes from the caller's policy on every call.
-- The in-flight hash maps request id -> "<estimate>:<reserved at, epoch s>".
--
-- Common ARGV of every bucket script:
--   ARGV[1]  time override in epoch seconds, or '' to use Redis TIME (only test clocks pass one)
--   ARGV[2]  the schedule, one JSON array (cjson decodes it in C: less Redis time than splitting a string,
--            and one argument is cheaper for the client to send):
--            [<limit>, <carry cap>, <period seconds>, <stale seconds>, [<boundary>, <boundary>, ...]]
--            limit: weighted tokens per period; carry cap: the most that carries into a new period (0 = no
--            carry-over); period seconds: the nominal period length; stale seconds: after how long an unsettled
--            reservation is dropped (its worker died); boundaries: ascending epoch seconds around now, computed
--            in the course's time zone.
-- Script-specific arguments start at ARGV[3].
--
-- Rollover is lazy: the first touch in a new period moves the bucket there. Crossing one boundary carries
-- min(max(limit + carried + granted - used, 0), cap): a negative left-over (overshoot) is forgiven, not carried.
-- Every further period crossed while the bucket was idle carries min(previous carry + limit, cap).
-- The number of periods crossed is round((new start - old start) / nominal length): exact while time-zone
-- offsets move period lengths by less than half a period (DST moves a week by one hour).

local function bucket_now()
  if ARGV[1] ~= '' then
    return tonumber(ARGV[1])
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function bucket_schedule()
  local s = cjson.decode(ARGV[2])
  return {limit = s[1], cap = s[2], period = s[3], stale = s[4], bounds = s[5]}
end

local NOW = bucket_now()
local SCHEDULE = bucket_schedule()

-- The period [start, end) containing NOW: from the boundary list, else extrapolated by the nominal length.
local function bucket_period()
  local period, bounds = SCHEDULE.period, SCHEDULE.bounds
  local n = #bounds
  if n == 0 or NOW < bounds[1] then
    local first = bounds[1] or 0
    local start = first - math.ceil((first - NOW) / period) * period
    return start, start + period
  end
  for i = 1, n - 1 do
    if NOW < bounds[i + 1] then
      return bounds[i], bounds[i + 1]
    end
  end
  local start = bounds[n] + math.floor((NOW - bounds[n]) / period) * period
  return start, start + period
end

-- The bucket rolled over to the period containing NOW (in memory; bucket_save writes it if dirty).
local function bucket_load(key)
  local start, finish = bucket_period()
  local v = redis.call('HMGET', key, 'ps', 'pe', 'carried', 'granted', 'used', 'hits', 'fresh')
  if not v[1] then
    return {ps = start, pe = finish, carried = 0, granted = 0, used = 0, hits = 0, fresh = 1,
            exists = false, dirty = true}
  end
  local b = {ps = tonumber(v[1]), pe = tonumber(v[2]), carried = tonumber(v[3]) or 0,
             granted = tonumber(v[4]) or 0, used = tonumber(v[5]) or 0, hits = tonumber(v[6]) or 0,
             fresh = v[7] and 1 or 0, exists = true, dirty = false}
  if b.ps ~= start or b.pe ~= finish then
    local limit, cap = SCHEDULE.limit, SCHEDULE.cap
    local crossed = math.floor((start - b.ps) / SCHEDULE.period + 0.5)
    if crossed >= 1 then
      local carry = math.min(math.max(limit + b.carried + b.granted - b.used, 0), cap)
      carry = math.min(carry + (crossed - 1) * limit, cap)
      b.carried, b.granted, b.used, b.hits = carry, 0, 0, 0
    end
    -- crossed < 1: the schedule moved (or the clock went back) by less than half a period: same period.
    b.ps, b.pe, b.dirty = start, finish, true
  end
  return b
end

local function bucket_save(key, b)
  if b.dirty then
    redis.call('HSET', key, 'ps', b.ps, 'pe', b.pe, 'carried', b.carried, 'granted', b.granted,
               'used', b.used, 'hits', b.hits)
    if not b.exists then
      redis.call('HSET', key, 'fresh', NOW)
    end
  end
end

-- Sum and count of live reservations, and whether request id `id` (optional) is one of them; drops stale ones.
local function bucket_inflight(key, id)
  local stale = SCHEDULE.stale
  local flat = redis.call('HGETALL', key)
  local reserved, count, live = 0, 0, false
  for i = 1, #flat, 2 do
    local value = flat[i + 1]
    local sep = string.find(value, ':', 1, true)
    local estimate = sep and tonumber(string.sub(value, 1, sep - 1))
    local at = sep and tonumber(string.sub(value, sep + 1))
    if not estimate or not at or NOW - at > stale then
      redis.call('HDEL', key, flat[i])
    else
      reserved, count = reserved + estimate, count + 1
      live = live or flat[i] == id
    end
  end
  return reserved, count, live
end

-- True the first time an id is recorded in the sorted set `key` (trimmed to `window` seconds), false on replays.
local function bucket_once(key, id, window)
  if redis.call('ZADD', key, 'NX', NOW, id) == 0 then
    return false
  end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', NOW - window)
  redis.call('EXPIRE', key, math.ceil(window))
  return true
end

-- Every bucket script replies {outcome, reason, limit, carried, granted, used, reserved, inflight,
-- period_start, period_end, limit_hits, fresh}.
local function bucket_reply(outcome, reason, b, reserved, count)
  return {outcome, reason, SCHEDULE.limit, b.carried, b.granted, b.used, reserved, count,
          b.ps, b.pe, b.hits, b.fresh}
end
