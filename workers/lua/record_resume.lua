-- KEYS: job, lease, history ; ARGV: token, keep_epochs
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local keep = tonumber(ARGV[2])
if keep <= 0 then redis.call('DEL', KEYS[3]) else redis.call('LTRIM', KEYS[3], 0, keep - 1) end
redis.call('HSET', KEYS[1], 'resumed_from_epoch', ARGV[2])
return 1
