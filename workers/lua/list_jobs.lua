-- KEYS: tenant jobs, index marker, the listed index (tenant jobs again when unfiltered) ; ARGV: prefix,
-- tenant, start, stop. A tenant whose jobs predate the per-status indexes (no marker) has them built
-- here once, from its records, in this one atomic step; from then on every status change keeps them.
if redis.call('EXISTS', KEYS[2]) == 0 then
  local base = ARGV[1] .. 'tenant:' .. ARGV[2] .. ':status:'
  for _, st in ipairs({'queued', 'running', 'succeeded', 'failed', 'cancelling', 'cancelled'}) do
    redis.call('DEL', base .. st)
  end
  local listed = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #listed, 2 do
    local st = redis.call('HGET', ARGV[1] .. 'job:' .. listed[i], 'status')
    if st then redis.call('ZADD', base .. st, listed[i + 1], listed[i]) end
  end
  redis.call('SET', KEYS[2], '1')
end
return {redis.call('ZCARD', KEYS[3]), redis.call('ZREVRANGE', KEYS[3], ARGV[3], ARGV[4])}
