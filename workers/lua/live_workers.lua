-- KEYS: the index ; ARGV: the prefix of a worker's hash. Returns each live worker's HGETALL as a flat
-- list and drops dead names from the index: one round trip, however many workers.
local live = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local fields = redis.call('HGETALL', ARGV[1] .. name)
  if #fields > 0 then table.insert(live, fields) else redis.call('SREM', KEYS[1], name) end
end
return live
