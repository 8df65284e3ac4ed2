-- KEYS: job, lease, active ; ARGV: token, now, job_id, reason, lost.
-- The worker hands a running job back at once (it is shutting down, the job did nothing wrong): queued
-- again without waiting for the lease to expire, the attempt not spent (claim skips its count while
-- 'released' is '1'), and listed in the outbox: the caller sends its message, then marks it sent.
-- A cancelling job is not released: the caller finishes it 'cancelled'.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return ARGV[5] end
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'running' then return st end
redis.call('HSET', KEYS[1], 'status', 'queued', 'released', '1', 'released_at', ARGV[2], 'release_reason', ARGV[4])
MOVE(KEYS[1], ARGV[3], 'running', 'queued')
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[3])
LIST_UNSENT(ARGV[3])
return 'queued'
