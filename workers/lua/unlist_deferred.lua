-- KEYS: deferred ; ARGV: job_id, score. The sweeper sent a deferred job: unlist it, unless a claim deferred
-- it again meanwhile (a new score), which must stay listed for the next sweep.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 1
