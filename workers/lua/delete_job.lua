-- KEYS: job, history, lease, active, outbox, finished, history moves, trash, by_status ;
-- ARGV: job_id, tenant ('' = any), the job's artifact prefix, grace_ms.
-- A finished job leaves Redis in one step: its record, history and lease, its place in every index and
-- count (its reserved artifact bytes too), and the Idempotency-Key entry that names it; its artifact
-- prefix goes into the trash, which the caller empties next (a crash in between leaves it to the sweeper).
-- A history move that was pending may be writing its file right now: that trash entry waits grace_ms, so
-- the sweeper removes the file after the mover is done. An unfinished job is refused: cancel it first.
-- Another tenant's: 'missing'.
-- A sweep's trial that was the last of its sweep's trials still there takes the sweep's record with it
-- (its tenant index entry, and the Idempotency-Key entry naming it): retention, or DELETE /v1/jobs on
-- each trial, leaves no empty sweep behind.
local function IDEMPOTENCY_GONE(record, id)
  local idem = redis.call('HGET', record, 'idempotency_key')
  if idem and idem ~= '' then
    local held = redis.call('GET', idem)
    if held then
      local ok, value = pcall(cjson.decode, held)
      if ok and type(value) == 'table' and value['id'] == id then redis.call('DEL', idem) end
    end
  end
end
local function DROP_SWEEP_IF_EMPTY(sweep_id, owner)
  local sweep = SWEEP_KEY(sweep_id)
  local ok, ids = pcall(cjson.decode, redis.call('HGET', sweep, 'job_ids') or '[]')
  if not ok or type(ids) ~= 'table' then return end
  for _, id in ipairs(ids) do
    if redis.call('EXISTS', JOB_KEY(id)) == 1 then return end
  end
  IDEMPOTENCY_GONE(sweep, sweep_id)
  redis.call('DEL', sweep)
  redis.call('ZREM', TENANT_KEY(owner, 'sweeps'), sweep_id)
end
local st = redis.call('HGET', KEYS[1], 'status')
if not st then  -- gone already: drop what still lists it (a retention sweep must not retry it forever)
  redis.call('ZREM', KEYS[6], ARGV[1])
  redis.call('ZREM', KEYS[7], ARGV[1])
  return {'missing', ''}
end
local owner = redis.call('HGET', KEYS[1], 'tenant') or ''
if ARGV[2] ~= '' and owner ~= ARGV[2] then return {'missing', ''} end
if st ~= 'succeeded' and st ~= 'failed' and st ~= 'cancelled' then return {'conflict', st} end
IDEMPOTENCY_GONE(KEYS[1], ARGV[1])
local sweep_id = redis.call('HGET', KEYS[1], 'sweep_id')
-- the bytes create_job.lua reserved for the job's artifacts go back with its record (none: a record
-- written before artifacts were reserved); the counter goes with its last reservation
local reserved = redis.call('HGET', KEYS[1], 'artifact_bytes')
if reserved and (tonumber(reserved) or 0) > 0 then
  local counter = TENANT_KEY(owner, 'artifact_bytes')
  if redis.call('DECRBY', counter, reserved) <= 0 then redis.call('DEL', counter) end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('ZREM', TENANT_KEY(owner, 'jobs'), ARGV[1])
redis.call('ZREM', TENANT_KEY(owner, 'status:' .. st), ARGV[1])
redis.call('SREM', UNFINISHED(owner), ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
local moving = redis.call('ZREM', KEYS[7], ARGV[1])
redis.call('HINCRBY', KEYS[9], st, -1)
local now = redis.call('TIME')
redis.call('ZADD', KEYS[8], now[1] * 1000 + math.floor(now[2] / 1000) + moving * tonumber(ARGV[4]), ARGV[3])
if sweep_id and sweep_id ~= '' then DROP_SWEEP_IF_EMPTY(sweep_id, owner) end
return {'deleted', tostring(moving)}
