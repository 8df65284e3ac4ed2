-- KEYS: job, tenant jobs, tenant unfinished, by_status, tenant's queued index, tenant's index marker ;
-- ARGV: job_id, created (epoch seconds), max_unfinished (0 = no limit), the record's field/value pairs
-- as one JSON array of strings. One argument, not 36: redis-py packs each argument in Python
-- (isinstance checks, encode) on the API's CPU; cjson decodes it at once (docs/perf.md).
-- The limit is checked in the same step that counts the new job, so concurrent submits cannot overshoot it.
-- The job goes into the outbox: the caller sends its Celery message, then marks it sent.
-- KEYS[7..]: datasets that must exist (the submit route's; see delete_dataset.lua): -2 when one does not.
for i = 7, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then return -2 end
end
local max_unfinished = tonumber(ARGV[3])
if max_unfinished > 0 then
  local unfinished = redis.call('SCARD', KEYS[3])
  if unfinished >= max_unfinished then return unfinished end
end
-- A tenant's first job: its per-status index starts complete (see list_jobs.lua for older tenants).
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SET', KEYS[6], '1') end
redis.call('HSET', KEYS[1], unpack(cjson.decode(ARGV[4])))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'queued', 1)
LIST_UNSENT(ARGV[1])
return -1
