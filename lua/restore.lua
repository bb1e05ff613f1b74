-- restore: put a bucket back from the Postgres record (ledger rebuild, or a bucket found missing).
-- (Prefixed with bucket.lua; see there for the common ARGV[1..2] and the reply layout.)
--
-- KEYS[1]  bucket hash          KEYS[2]  in-flight hash
-- ARGV[3]  mode: "exact" or "merge"
-- ARGV[4]  period start         ARGV[5]  period end      ARGV[6]  carried
-- ARGV[7]  granted              ARGV[8]  used            ARGV[9]  limit hits
--
-- "exact": the bucket becomes exactly the given period and counters (outcome "restored").
-- "merge": only for a bucket that is missing or still fresh (never reconciled): after rollover, if its period
-- starts at ARGV[4], the Postgres totals are added to what it collected since it was created and carried is
-- set (outcome "merged"). A reconciled bucket is left alone ("kept"); a different period changes nothing
-- ("mismatch"). Either way the fresh mark is cleared only when the record was applied.

local b
local outcome
if ARGV[3] == 'exact' then
  b = {ps = tonumber(ARGV[4]), pe = tonumber(ARGV[5]), carried = tonumber(ARGV[6]), granted = tonumber(ARGV[7]),
       used = tonumber(ARGV[8]), hits = tonumber(ARGV[9]), fresh = 0, exists = true, dirty = true}
  outcome = 'restored'
else
  b = bucket_load(KEYS[1])
  if b.exists and b.fresh == 0 then
    outcome = 'kept'
  elseif b.ps ~= tonumber(ARGV[4]) then
    local reserved, count = bucket_inflight(KEYS[2])
    return bucket_reply('mismatch', '', b, reserved, count)
  else
    b.carried = tonumber(ARGV[6])
    b.granted = b.granted + tonumber(ARGV[7])
    b.used = b.used + tonumber(ARGV[8])
    b.hits = b.hits + tonumber(ARGV[9])
    b.fresh, b.exists, b.dirty = 0, true, true
    outcome = 'merged'
  end
end
bucket_save(KEYS[1], b)
if b.fresh == 0 then
  redis.call('HDEL', KEYS[1], 'fresh')
end
local reserved, count = bucket_inflight(KEYS[2])
return bucket_reply(outcome, '', b, reserved, count)
