-- Moves delayed retries that are due to the back of the queue.
-- KEYS[1] {job_queue}:delayed, KEYS[2] job_queue, KEYS[3] {job_queue}:pending,
-- KEYS[4] {job_queue}:seq
-- ARGV[1] now (ms), ARGV[2] at most this many
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, v in ipairs(due) do
  redis.call('ZREM', KEYS[1], v)
  redis.call('LPUSH', KEYS[2], v)
  local ok, decoded = pcall(cjson.decode, v)
  if ok and type(decoded) == 'table' and type(decoded['job_id']) == 'string' then
    redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[4]), decoded['job_id'])
  end
end
return #due
