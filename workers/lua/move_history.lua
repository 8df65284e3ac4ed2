-- KEYS: job, history, history moves ; ARGV: job_id, moved (entries the caller has just stored in the
-- artifact store). An ended job's history leaves Redis once the file holds exactly what Redis holds;
-- a deleted job's entry is dropped ('missing': the caller removes the file it wrote).
local st = redis.call('HGET', KEYS[1], 'status')
if not st then
  redis.call('ZREM', KEYS[3], ARGV[1])
  return 'missing'
end
if st ~= 'succeeded' and st ~= 'failed' and st ~= 'cancelled' then return st end
if redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[2]) then return 'changed' end
-- the last entry stays in the record (history_last), as in finish.lua: a sweep ranks by it
redis.call('HSET', KEYS[1], 'history_stored', ARGV[2], 'history_last', redis.call('LINDEX', KEYS[2], -1))
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return 'moved'
