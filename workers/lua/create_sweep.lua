-- Appended after `local function CREATE_JOB(KEYS, ARGV) <lib.lua + create_job.lua> end` (workers/sweeps.py):
-- every trial is written by create_job's own body, so a trial is the same job a submit makes.
-- KEYS: sweep, tenant sweeps, tenant unfinished, tenant's reserved artifact bytes, then create_job's keys
-- of each trial (ARGV[3] each) ;
-- ARGV: max_unfinished (0 = no limit), created (epoch seconds), keys per trial, the sweep id, the sweep
-- record's field/value pairs (one JSON array), the tenant's artifact quota in bytes (0 = none), the sum of
-- the trials' reservations, then create_job's ARGV of each trial (one JSON array each; each trial's own
-- reservation, with no quota of its own: the sum is checked here).
-- KEYS after the trials' (KEYS[5 + n * per ..]): the datasets every trial names, when the route asks
-- (require_datasets): the j-th one absent (deleted a moment ago) -> -1 - j, nothing written, as
-- create_job.lua's check does for one job (see delete_dataset.lua).
-- All or nothing: the datasets, the tenant's limit ({unfinished}) and its artifact quota ({'over', bytes
-- reserved}) are checked for every trial at once, before anything is written.
local per = tonumber(ARGV[3])
local n = #ARGV - 7
local first_dataset = 5 + n * per
for i = first_dataset, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then return -1 - (i - first_dataset + 1) end
end
local max_unfinished = tonumber(ARGV[1])
if max_unfinished > 0 then
  local unfinished = redis.call('SCARD', KEYS[3])
  if unfinished + n > max_unfinished then return unfinished end
end
local quota = tonumber(ARGV[6])
if quota > 0 then
  local used = redis.call('GET', KEYS[4]) or '0'
  if tonumber(used) + tonumber(ARGV[7]) > quota then return {'over', used} end
end
for i = 0, n - 1 do
  local job_keys = {}
  for j = 1, per do job_keys[j] = KEYS[4 + i * per + j] end
  CREATE_JOB(job_keys, cjson.decode(ARGV[8 + i]))
end
redis.call('HSET', KEYS[1], unpack(cjson.decode(ARGV[5])))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
return -1
