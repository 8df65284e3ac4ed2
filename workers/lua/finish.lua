-- KEYS: job, lease, active, stats, history ; ARGV: token, new_status, now, job_id, moved (the number of
-- history entries the caller has just stored in the artifact store; 0: none), then field/value pairs.
-- When Redis still holds exactly those entries, the list goes in this same step (nothing could be
-- appended in between: the token holds the lease), so the history is always in one place or the other.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local st = redis.call('HGET', KEYS[1], 'status')
local new = ARGV[2]
local ok = false
if st == 'running' then ok = (new == 'succeeded' or new == 'failed')
elseif st == 'cancelling' then ok = (new == 'cancelled' or new == 'succeeded' or new == 'failed') end
if not ok then return 0 end
redis.call('HSET', KEYS[1], 'status', new, 'finished_at', ARGV[3])
local moved = tonumber(ARGV[5])
if moved > 0 and redis.call('LLEN', KEYS[5]) == moved then
  -- the last entry stays in the record (history_last): a sweep ranks its trials by it, reading no file
  redis.call('HSET', KEYS[1], 'history_stored', moved, 'history_last', redis.call('LINDEX', KEYS[5], -1))
  redis.call('DEL', KEYS[5])
end
MOVE(KEYS[1], ARGV[4], st, new)
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('SREM', KEYS[3], ARGV[4])
redis.call('SREM', UNFINISHED(redis.call('HGET', KEYS[1], 'tenant')), ARGV[4])
redis.call('DEL', KEYS[2])
redis.call('HINCRBY', KEYS[4], 'jobs_' .. new .. '_total', 1)
return 1
