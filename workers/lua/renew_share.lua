-- KEYS: busy ; ARGV: member, lease_ms. Push back when this worker process stops counting against its
-- tenant's DNNQ_MAX_WORKERS_PER_TENANT (see claim.lua); only while it is still listed.
local now = redis.call('TIME')
redis.call('ZADD', KEYS[1], 'XX', now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[2]), ARGV[1])
return 1
