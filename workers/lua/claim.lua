-- KEYS: job, lease, active ; ARGV: token, lease_ms, now, job_id, celery_task_id ('' = not through Celery)
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'queued' then return 0 end
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
