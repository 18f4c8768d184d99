-- The queue side of a claim's fate, all in the {job_queue} slot.
-- KEYS[1] {job_queue}:processing:<worker>, KEYS[2] {job_queue}:pending,
-- KEYS[3] {job_queue}:index, KEYS[4] {job_queue}:seq, KEYS[5] {job_queue}:delayed,
-- KEYS[6] {job_queue}:dead, KEYS[7] job_queue, KEYS[8..11] status indexes,
-- KEYS[12..19] lane keys
-- ARGV[1] action, ARGV[2] payload, ARGV[3] job id, ARGV[4] index cap,
-- ARGV[5] due (ms), ARGV[6] dead letter JSON, ARGV[7] the job's status now ('' unknown),
-- ARGV[8] the queue's hash tag
local action = ARGV[1]
local sets = status_sets(8)
local tag, owner = ARGV[8], owner_of(ARGV[2])
local L = lane_keys(12)
if action == 'claimed' then
  -- leased: no longer waiting; listed even if another program pushed it. Only while
  -- the payload is still this worker's: this script can run late (a worker cut off
  -- from Redis, its command delivered when the link came back), after the reaper
  -- took the job back and another worker ran it to its end, and must not list that
  -- job as processing again.
  if not redis.call('LPOS', KEYS[1], ARGV[2]) then return 0 end
  redis.call('ZREM', KEYS[2], ARGV[3])
  if not redis.call('ZSCORE', KEYS[3], ARGV[3]) then
    redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[4]), ARGV[3])
    trim_index(KEYS[3], sets, tonumber(ARGV[4]))
  end
  list_as(KEYS[3], sets, ARGV[3], 'processing', tag, owner)
elseif action == 'drop' then
  -- Listed where it is now only if the payload was still this worker's (see above).
  if redis.call('LREM', KEYS[1], 1, ARGV[2]) > 0 then
    stopped(L, tag, owner)
    redis.call('ZREM', KEYS[2], ARGV[3])
    list_as(KEYS[3], sets, ARGV[3], ARGV[7], tag, owner)
  end
elseif action == 'done' then
  if redis.call('LREM', KEYS[1], 1, ARGV[2]) > 0 then stopped(L, tag, owner) end
  list_as(KEYS[3], sets, ARGV[3], ARGV[7], tag, owner)
elseif action == 'delay' then
  if redis.call('LREM', KEYS[1], 1, ARGV[2]) > 0 then stopped(L, tag, owner) end
  redis.call('ZADD', KEYS[5], ARGV[5], ARGV[2])
  list_as(KEYS[3], sets, ARGV[3], 'queued', tag, owner)
elseif action == 'dead' then
  if redis.call('LREM', KEYS[1], 1, ARGV[2]) > 0 then stopped(L, tag, owner) end
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('LPUSH', KEYS[6], ARGV[6])
  redis.call('LTRIM', KEYS[6], 0, 9999)
  list_as(KEYS[3], sets, ARGV[3], 'failed', tag, owner)
elseif action == 'release' then
  -- back to its lane, first in line
  if redis.call('LREM', KEYS[1], 1, ARGV[2]) > 0 then
    stopped(L, tag, owner)
    enlane(L, tag, KEYS[7], ARGV[2], ARGV[3], owner, 0, true)
    pending_first(KEYS[2], ARGV[3])
    list_as(KEYS[3], sets, ARGV[3], 'queued', tag, owner)
  end
else
  return redis.error_reply('unknown settle action ' .. action)
end
return 1
