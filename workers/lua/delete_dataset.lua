-- KEYS: dataset, tenant datasets, tenant unfinished, trash ; ARGV: dataset_id, tenant ('' = any), the
-- job key prefix, the dataset's artifact key.
-- Refused ('in_use', a job id) while a queued, running or cancelling job of the tenant names it (a job
-- uses its own tenant's datasets only). A submit checks the record in its own script (create_job.lua):
-- Redis runs the two one after the other, so a job is never created on a dataset being deleted.
local owner = redis.call('HGET', KEYS[1], 'tenant')
if not owner or (ARGV[2] ~= '' and owner ~= ARGV[2]) then return {'missing', ''} end
for _, id in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local uses = redis.call('HMGET', ARGV[3] .. id, 'dataset_id', 'validation_dataset_id')
  if uses[1] == ARGV[1] or uses[2] == ARGV[1] then return {'in_use', id} end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local now = redis.call('TIME')
redis.call('ZADD', KEYS[4], now[1] * 1000 + math.floor(now[2] / 1000), ARGV[4])
return {'deleted', ''}
