-- Put before each script that changes a status (workers/scripts.py); the dollar names are key names from
-- workers/keys.py.

-- Every script that ends a job also drops it from its tenant's unfinished set (see count_unfinished).
local function UNFINISHED(tenant) return '$TENANT_PREFIX' .. tenant .. ':unfinished' end
-- Any other key of a tenant's (delete_job.lua: its listing and status indexes).
local function TENANT_KEY(tenant, suffix) return '$TENANT_PREFIX' .. tenant .. ':' .. suffix end
-- A job's and a sweep's record (delete_job.lua: a sweep goes with its last trial).
local function JOB_KEY(id) return '$PREFIX' .. 'job:' .. id end
local function SWEEP_KEY(id) return '$PREFIX' .. 'sweep:' .. id end

-- A queued job whose Celery message is not out yet goes into the outbox, scored by Redis's own clock
-- (ms), so whoever sends late messages compares no clocks across hosts.
local function LIST_UNSENT(id)
  local now = redis.call('TIME')
  redis.call('ZADD', '$OUTBOX', now[1] * 1000 + math.floor(now[2] / 1000), id)
end

-- Every script that changes a status moves one count between the by-status hash's fields (what
-- /metrics reads), and the job between its tenant's per-status indexes (what GET /v1/jobs?status=
-- pages through), keeping its creation time as the score.
-- A job that ends goes into the finished index (what retention reads), and, when its history is longer
-- than what a finished job may keep in Redis, into the list of histories the sweeper moves to the
-- artifact store (a worker's finish moves its own first: see finish.lua).
local function ENDED(job, id)
  local now = redis.call('TIME')
  local ms = now[1] * 1000 + math.floor(now[2] / 1000)
  redis.call('ZADD', '$FINISHED', ms, id)
  if redis.call('LLEN', job .. ':history') > $HISTORY_INLINE_MAX then redis.call('ZADD', '$HISTORY_MOVES', ms, id) end
end

local function MOVE(job, id, from, to)
  if from == to then return end
  redis.call('HINCRBY', '$BY_STATUS', from, -1)
  redis.call('HINCRBY', '$BY_STATUS', to, 1)
  if to == 'succeeded' or to == 'failed' or to == 'cancelled' then ENDED(job, id) end
  local owner = redis.call('HGET', job, 'tenant')
  if not owner then return end
  local tenant = '$TENANT_PREFIX' .. owner
  local created = redis.call('ZSCORE', tenant .. ':jobs', id)
  redis.call('ZREM', tenant .. ':status:' .. from, id)
  if created then redis.call('ZADD', tenant .. ':status:' .. to, created, id) end
end

