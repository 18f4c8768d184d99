-- Puts a job at the back of the queue and into the listing and position indexes.
-- KEYS[1] job_queue, KEYS[2] {job_queue}:index, KEYS[3] {job_queue}:pending,
-- KEYS[4] {job_queue}:seq
-- ARGV[1] payload, ARGV[2] job id, ARGV[3] index cap
local seq = redis.call('INCR', KEYS[4])
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], seq, ARGV[2])
redis.call('ZADD', KEYS[3], seq, ARGV[2])
local cap = tonumber(ARGV[3])
if redis.call('ZCARD', KEYS[2]) > cap then
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(cap + 1))
end
return seq
