-- read: a student's bucket in the current period, without debiting.
-- (Prefixed with bucket.lua; see there for the common ARGV[1..2] and the reply layout.)
--
-- KEYS[1]  bucket hash          KEYS[2]  in-flight hash
--
-- Saves a rollover of an existing bucket; a missing bucket is reported (fresh = 1) but not created.
-- Outcome "ok".

local b = bucket_load(KEYS[1])
if b.exists then
  bucket_save(KEYS[1], b)
end
local reserved, count = bucket_inflight(KEYS[2])
return bucket_reply('ok', '', b, reserved, count)
