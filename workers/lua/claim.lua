-- KEYS: job, lease, active [, busy, deferred] ; ARGV: token, lease_ms, now, job_id, celery_task_id ('' = not
-- through Celery) [, member, cap].
-- With cap > 0 (DNNQ_MAX_WORKERS_PER_TENANT), busy holds the worker processes training the tenant's jobs,
-- each scored by when it stops counting (Redis's clock, ms: a process killed with kill -9 drops out):
-- a process not in it while cap others are leaves the job queued, listed in deferred, and answers -1.
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'queued' then return 0 end
local cap = tonumber(ARGV[7] or '0')
if cap > 0 then
  local now = redis.call('TIME')
  local ms = now[1] * 1000 + math.floor(now[2] / 1000)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ms)
  if (not redis.call('ZSCORE', KEYS[4], ARGV[6])) and redis.call('ZCARD', KEYS[4]) >= cap then
    redis.call('ZADD', KEYS[5], ms, ARGV[4])
    return -1
  end
  redis.call('ZADD', KEYS[4], ms + tonumber(ARGV[2]), ARGV[6])
end
redis.call('HSET', KEYS[1], 'status', 'running')
if ARGV[5] and ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'celery_task_id', ARGV[5]) end
MOVE(KEYS[1], ARGV[4], 'queued', 'running')
local started = redis.call('HGET', KEYS[1], 'started_at')
if (not started) or started == '' then redis.call('HSET', KEYS[1], 'started_at', ARGV[3]) end
-- A released job (see release.lua) goes on with the attempt it was released from.
if redis.call('HGET', KEYS[1], 'released') == '1' then
  redis.call('HSET', KEYS[1], 'released', '')
else
  redis.call('HINCRBY', KEYS[1], 'attempts', 1)
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[4])
return 1
