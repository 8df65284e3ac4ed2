-- Appended after `local function DELETE_JOB(KEYS, ARGV) <lib.lua + delete_job.lua> end` (workers/sweeps.py):
-- every trial leaves exactly as DELETE /v1/jobs/{id} deletes a job.
-- KEYS: sweep, tenant sweeps, then delete_job's keys of each trial (ARGV[3] each) ;
-- ARGV: sweep id, tenant ('' = any), keys per trial, grace_ms, then each trial's job id.
-- All or nothing: a trial still queued, running or cancelling refuses the whole delete before anything
-- goes ({'conflict', job id, status}); another tenant's sweep, or one gone already: {'missing'}.
-- Else {'deleted', then per trial its delete_job answer's second field ('1': a history move was in
-- flight; '' : the trial was gone already)}.
local owner = redis.call('HGET', KEYS[1], 'tenant')
if not owner or (ARGV[2] ~= '' and owner ~= ARGV[2]) then return {'missing'} end
local per = tonumber(ARGV[3])
local n = #ARGV - 4
for i = 1, n do
  local st = redis.call('HGET', KEYS[2 + (i - 1) * per + 1], 'status')
  if st and st ~= 'succeeded' and st ~= 'failed' and st ~= 'cancelled' then
    return {'conflict', ARGV[4 + i], st}
  end
end
local out = {'deleted'}
for i = 1, n do
  local job_keys = {}
  for j = 1, per do job_keys[j] = KEYS[2 + (i - 1) * per + j] end
  local id = ARGV[4 + i]
  local done = DELETE_JOB(job_keys, {id, '', 'jobs/' .. id .. '/', ARGV[4]})
  out[#out + 1] = done[1] == 'deleted' and done[2] or ''
end
-- The last trial's delete took the sweep's record (delete_job.lua); one whose trials were gone already
-- goes here, with the Idempotency-Key entry naming it.
local idem = redis.call('HGET', KEYS[1], 'idempotency_key')
if idem and idem ~= '' then
  local held = redis.call('GET', idem)
  local ok, value = pcall(cjson.decode, held or '')
  if ok and type(value) == 'table' and value['id'] == ARGV[1] then redis.call('DEL', idem) end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return out
