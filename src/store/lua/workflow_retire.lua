-- Retires a published workflow's name. KEYS[1] names, KEYS[2] the generation;
-- ARGV[1] name. Returns 1, or 0 for an unknown name.
local meta = redis.call('HGET', KEYS[1], ARGV[1])
if not meta then return 0 end
local latest = string.match(meta, '^(%d+)')
redis.call('HSET', KEYS[1], ARGV[1], latest .. ' 1')
redis.call('INCR', KEYS[2])
return 1
