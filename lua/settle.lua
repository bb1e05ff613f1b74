-- settle: debit a finished request's metered weighted tokens, once per request id.
-- (Prefixed with bucket.lua; see there for the common ARGV[1..2] and the reply layout.)
--
-- KEYS[1]  bucket hash          KEYS[2]  in-flight hash          KEYS[3]  settled request ids (sorted set)
-- ARGV[3]  request id           ARGV[4]  weighted tokens         ARGV[5]  seconds settled ids are remembered
--
-- Rolls the bucket over first; the debit lands in the period current at settle time. Works without a
-- reservation (fail-open replay, stale entry dropped). Outcome "settled", or "duplicate" for a request id
-- already settled within the window (nothing changes).

local b = bucket_load(KEYS[1])
local outcome = 'duplicate'
if bucket_once(KEYS[3], ARGV[3], tonumber(ARGV[5])) then
  outcome = 'settled'
  redis.call('HDEL', KEYS[2], ARGV[3])
  b.used, b.dirty = b.used + tonumber(ARGV[4]), true
end
bucket_save(KEYS[1], b)
local reserved, count = bucket_inflight(KEYS[2])
return bucket_reply(outcome, '', b, reserved, count)
