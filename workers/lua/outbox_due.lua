-- KEYS: outbox ; ARGV: min_age_ms [, withscores ('1')]. The ids listed at least min_age_ms ago, by Redis's
-- clock (the one that scored them: no clocks compared across hosts). Read only.
local now = redis.call('TIME')
local cutoff = now[1] * 1000 + math.floor(now[2] / 1000) - tonumber(ARGV[1])
if ARGV[2] == '1' then return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'WITHSCORES') end
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)
