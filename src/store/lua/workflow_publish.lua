-- Stores the next version of a published workflow.
-- KEYS[1] names (hash: name -> "<latest> <retired>"), KEYS[2] the name's versions
-- (hash: version -> definition), KEYS[3] the generation
-- ARGV[1] name, ARGV[2] definition, ARGV[3] most names
-- Returns the version, or -1 when there are too many names.
local meta = redis.call('HGET', KEYS[1], ARGV[1])
local latest = 0
if meta then
  latest = tonumber(string.match(meta, '^(%d+)'))
elseif redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return -1
end
local v = latest + 1
redis.call('HSET', KEYS[2], v, ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], v .. ' 0')
redis.call('INCR', KEYS[3])
return v
