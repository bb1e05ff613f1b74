-- grant: add convenor-granted tokens to the current period, once per grant id.
-- (Prefixed with bucket.lua; see there for the common ARGV[1..2] and the reply layout.)
--
-- KEYS[1]  bucket hash          KEYS[2]  in-flight hash          KEYS[3]  applied grant ids (sorted set)
-- ARGV[3]  grant id             ARGV[4]  tokens (may be negative) ARGV[5]  seconds grant ids are remembered
--
-- Outcome "granted", or "duplicate" for a grant id already applied within the window (nothing changes).

local b = bucket_load(KEYS[1])
local outcome = 'duplicate'
if bucket_once(KEYS[3], ARGV[3], tonumber(ARGV[5])) then
  outcome = 'granted'
  b.granted, b.dirty = b.granted + tonumber(ARGV[4]), true
end
bucket_save(KEYS[1], b)
local reserved, count = bucket_inflight(KEYS[2])
return bucket_reply(outcome, '', b, reserved, count)
