-- Takes a job's stored outputs out of the index and their bytes off the
-- owner's count; returns the entry's JSON, or false when there was none.
-- KEYS[1] {q}:outputs, KEYS[2] {q}:output-files, KEYS[3] {q}:stored
-- ARGV[1] job id
local j = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
if not j then return false end
redis.call('HDEL', KEYS[2], ARGV[1])
local ok, o = pcall(cjson.decode, j)
if ok and type(o) == 'table' and o.owner and tonumber(o.bytes) then
  local left = redis.call('HINCRBY', KEYS[3], o.owner, -tonumber(o.bytes))
  if left <= 0 then redis.call('HDEL', KEYS[3], o.owner) end
end
return j
