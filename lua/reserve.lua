-- reserve: admit one request against a student's bucket, or refuse it.
-- (Prefixed with bucket.lua; see there for the common ARGV[1..2] and the reply layout.)
--
-- KEYS[1]  bucket hash          KEYS[2]  in-flight hash          KEYS[3]  key status string ("status|reason")
-- KEYS[4]  settled request ids (sorted set)
-- ARGV[3]  request id           ARGV[4]  estimate (weighted tokens reserved until settle)
-- ARGV[5]  most requests in flight at once (0 = no limit)
--
-- Outcome: "key_unknown" (no status stored: load it from Postgres and retry), "suspended" / "revoked"
-- (reason = the stored reason): for these three the bucket is not written (not even created); stale
-- reservations are still dropped. "quota" (limit_hits incremented),
-- "inflight" (too many in flight), "admitted" (in-flight[request id] = estimate; also for a repeated request id,
-- and -- reserving nothing -- for one already settled: a reserve that timed out on the client, was settled with 0,
-- and only then ran on a stalled Redis must not hold an in-flight slot until it goes stale).
-- Admits iff remaining - reserved > 0 and fewer than ARGV[5] requests are in flight.

local status = redis.call('GET', KEYS[3])
local reason = ''
if status then
  local bar = string.find(status, '|', 1, true)
  if bar then
    status, reason = string.sub(status, 1, bar - 1), string.sub(status, bar + 1)
  end
end

local request_id, estimate, max_inflight = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local b = bucket_load(KEYS[1])
local reserved, count, live = bucket_inflight(KEYS[2], request_id)
if status ~= 'active' then
  if status ~= 'suspended' and status ~= 'revoked' then
    status = 'key_unknown'
  end
  return bucket_reply(status, reason, b, reserved, count)
end

local outcome = 'admitted'
if live or redis.call('ZSCORE', KEYS[4], request_id) then
  -- a repeated reserve for a request already in flight (admitted once, reserved once), or one already settled
elseif SCHEDULE.limit + b.carried + b.granted - b.used - reserved <= 0 then
  outcome = 'quota'
  b.hits, b.dirty = b.hits + 1, true
elseif max_inflight > 0 and count >= max_inflight then
  outcome = 'inflight'
else
  redis.call('HSET', KEYS[2], request_id, estimate .. ':' .. NOW)
  redis.call('EXPIRE', KEYS[2], math.ceil(SCHEDULE.stale))
  reserved, count = reserved + estimate, count + 1
end
bucket_save(KEYS[1], b)
return bucket_reply(outcome, '', b, reserved, count)
