-- KEYS: job, tenant jobs, tenant unfinished, by_status, tenant's queued index, tenant's index marker,
-- tenant's reserved artifact bytes ;
-- ARGV: job_id, created (epoch seconds), max_unfinished (0 = no limit), the record's field/value pairs
-- as one JSON array of strings, the tenant's artifact quota in bytes (0 = none), this job's reservation.
-- One JSON argument, not 36: redis-py packs each argument in Python (isinstance checks, encode) on the
-- API's CPU; cjson decodes it at once (docs/perf.md).
-- The limits are checked in the same step that counts the new job, so concurrent submits cannot overshoot
-- them: the unfinished jobs (their number returned), then the artifact quota ({'over', bytes reserved}).
-- The reservation is counted with the record, and delete_job.lua gives it back with the record, so the
-- counter is always the sum over the tenant's records (workers/artifact_quota.py).
-- The job goes into the outbox: the caller sends its Celery message, then marks it sent.
-- KEYS[8..]: datasets that must exist (the submit route's; see delete_dataset.lua): -2 when one does not.
for i = 8, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then return -2 end
end
local max_unfinished = tonumber(ARGV[3])
if max_unfinished > 0 then
  local unfinished = redis.call('SCARD', KEYS[3])
  if unfinished >= max_unfinished then return unfinished end
end
-- (the counts go to INCRBY and back to the caller as the strings they are: Lua prints large numbers
-- in exponent form)
local quota, reserve = tonumber(ARGV[5]), tonumber(ARGV[6])
if quota > 0 then
  local used = redis.call('GET', KEYS[7]) or '0'
  if tonumber(used) + reserve > quota then return {'over', used} end
end
-- A tenant's first job: its per-status index starts complete (see list_jobs.lua for older tenants).
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SET', KEYS[6], '1') end
redis.call('HSET', KEYS[1], unpack(cjson.decode(ARGV[4])))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'queued', 1)
if reserve > 0 then redis.call('INCRBY', KEYS[7], ARGV[6]) end
LIST_UNSENT(ARGV[1])
return -1
