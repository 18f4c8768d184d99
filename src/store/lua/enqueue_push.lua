-- Puts a job at the back of the queue and into the listing and position indexes,
-- unless the queue is full (counted as our jobs listed `queued`: waiting or due for
-- a retry; a cancelled job's entry left in job_queue does not count); then
-- announces it.
-- KEYS[1] job_queue, KEYS[2] {job_queue}:index, KEYS[3] {job_queue}:pending,
-- KEYS[4] {job_queue}:seq, KEYS[5..8] status indexes
-- ARGV[1] payload, ARGV[2] job id, ARGV[3] index cap, ARGV[4] most jobs waiting,
-- ARGV[5] events channel, ARGV[6] the new job's event (JSON), ARGV[7] the queue's
-- hash tag, ARGV[8] the owner ('' for none)
-- Returns the job's sequence number, or -1 when the queue is full
local sets = status_sets(5)
if redis.call('ZCARD', sets.queued) >= tonumber(ARGV[4]) then return -1 end
local seq = redis.call('INCR', KEYS[4])
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], seq, ARGV[2])
redis.call('ZADD', KEYS[3], seq, ARGV[2])
redis.call('ZADD', sets.queued, seq, ARGV[2])
if ARGV[8] ~= '' then
  local oindex, osets = owner_keys(ARGV[7], ARGV[8])
  redis.call('ZADD', oindex, seq, ARGV[2])
  redis.call('ZADD', osets.queued, seq, ARGV[2])
  trim_index(oindex, osets, tonumber(ARGV[3]))
end
trim_index(KEYS[2], sets, tonumber(ARGV[3]))
redis.call('PUBLISH', ARGV[5], ARGV[6])
return seq
