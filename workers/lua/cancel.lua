-- KEYS: job, stats ; ARGV: now
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'missing', ''} end
if st == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
  MOVE(KEYS[1], redis.call('HGET', KEYS[1], 'id'), 'queued', 'cancelled')
  redis.call('SREM', UNFINISHED(redis.call('HGET', KEYS[1], 'tenant')), redis.call('HGET', KEYS[1], 'id'))
  redis.call('HINCRBY', KEYS[2], 'jobs_cancelled_total', 1)
  return {'ok', 'cancelled'}
end
if st == 'running' or st == 'cancelling' then
  redis.call('HSET', KEYS[1], 'status', 'cancelling')
  MOVE(KEYS[1], redis.call('HGET', KEYS[1], 'id'), st, 'cancelling')
  return {'ok', 'cancelling'}
end
return {'conflict', st}
