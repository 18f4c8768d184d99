-- Lists a job under its status now: after a cancel of a queued job (which also
-- leaves the queue-position index), or when a listing found an index entry stale.
-- KEYS[1] {job_queue}:index, KEYS[2] {job_queue}:pending, KEYS[3..6] status indexes,
-- KEYS[7..14] lane keys
-- ARGV[1] job id, ARGV[2] status, or 'gone' (expired), ARGV[3] '1': no longer waiting,
-- ARGV[4] the queue's hash tag, ARGV[5] the job's owner ('' for none)
local sets = status_sets(3)
if ARGV[3] == '1' then
  -- No longer waiting: out of the position index, and out of its lane.
  redis.call('ZREM', KEYS[2], ARGV[1])
  if ARGV[5] ~= '' then
    local L = lane_keys(7)
    redis.call('ZREM', lane_of(ARGV[4], ARGV[5]), ARGV[1])
    redis.call('HDEL', L.entries, ARGV[1])
    if redis.call('ZCARD', lane_of(ARGV[4], ARGV[5])) == 0 then
      redis.call('ZREM', L.lanes, ARGV[5])
      redis.call('SREM', L.blocked, ARGV[5])
      drop_sublanes(ARGV[4], ARGV[5])
    end
  end
end
list_as(KEYS[1], sets, ARGV[1], ARGV[2], ARGV[4], ARGV[5])
return 1
