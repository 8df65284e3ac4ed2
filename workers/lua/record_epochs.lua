-- KEYS: job, lease, history, stats ; ARGV: token, progress_json, lost, device ('' = unchanged), then one
-- history entry (JSON) per epoch, in order
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return ARGV[3] end
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'running' and st ~= 'cancelling' then return st end
redis.call('RPUSH', KEYS[3], unpack(ARGV, 5))
redis.call('HSET', KEYS[1], 'progress', ARGV[2])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'device', ARGV[4]) end
redis.call('HINCRBY', KEYS[4], 'epochs_total', #ARGV - 4)
return st
