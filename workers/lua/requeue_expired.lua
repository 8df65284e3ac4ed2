-- KEYS: active, stats ; ARGV: prefix, now, max_attempts (0 = no limit), error message
local requeued = {}
local max_attempts = tonumber(ARGV[3])
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local job = ARGV[1] .. 'job:' .. id
  if redis.call('EXISTS', job .. ':lease') == 0 then
    local st = redis.call('HGET', job, 'status')
    if st == 'running' then
      local attempts = tonumber(redis.call('HGET', job, 'attempts') or '0') or 0
      if max_attempts > 0 and attempts >= max_attempts then
        redis.call('HSET', job, 'status', 'failed', 'finished_at', ARGV[2], 'error', ARGV[4])
        MOVE(job, id, 'running', 'failed')
        redis.call('HINCRBY', KEYS[2], 'jobs_failed_total', 1)
        redis.call('SREM', UNFINISHED(redis.call('HGET', job, 'tenant')), id)
      else
        redis.call('HSET', job, 'status', 'queued')
        MOVE(job, id, 'running', 'queued')
        LIST_UNSENT(id)
        table.insert(requeued, id)
      end
    elseif st == 'cancelling' then
      redis.call('HSET', job, 'status', 'cancelled', 'finished_at', ARGV[2])
      MOVE(job, id, 'cancelling', 'cancelled')
      redis.call('HINCRBY', KEYS[2], 'jobs_cancelled_total', 1)
      redis.call('SREM', UNFINISHED(redis.call('HGET', job, 'tenant')), id)
    end
    redis.call('SREM', KEYS[1], id)
  end
end
return requeued
