-- KEYS: the dataset's record, the tenant's datasets, trash ; ARGV: the tenant's quota in bytes (0: none),
-- this dataset's size in bytes, its listing score, the dataset key prefix, its stored file's key, then the
-- record's field/value pairs.
-- 'exists' when the record is there already (identical content, stored meanwhile); {'over', bytes used}
-- when the tenant's datasets and this one would pass the quota (the sum of their records' size_bytes,
-- read here so that two uploads at once cannot both fit in the room for one), its file then listed in
-- the trash; else 'created'.
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists', '0'} end
local quota, size = tonumber(ARGV[1]), tonumber(ARGV[2])
if quota > 0 then
  local used = 0
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    used = used + (tonumber(redis.call('HGET', ARGV[4] .. id, 'size_bytes')) or 0)
  end
  if used + size > quota then
    local now = redis.call('TIME')  -- its file, stored already, is listed for removal (trash.remove)
    redis.call('ZADD', KEYS[3], now[1] * 1000 + math.floor(now[2] / 1000), ARGV[5])
    return {'over', tostring(used)}
  end
end
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[2], ARGV[3], redis.call('HGET', KEYS[1], 'id'))
return {'created', '0'}
