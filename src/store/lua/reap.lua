-- The reaper's half on the queue: moves a dead worker's payloads back to the
-- consuming end of job_queue (first in line), then forgets the worker once its list
-- is empty and it has not come back.
-- KEYS[1] job_queue, KEYS[2] {job_queue}:processing:<worker>, KEYS[3] {job_queue}:hb:<worker>,
-- KEYS[4] {job_queue}:workers, KEYS[5] {job_queue}:pending, KEYS[6] {job_queue}:index,
-- KEYS[7..10] status indexes, KEYS[11..18] lane keys
-- ARGV[1] worker id, ARGV[2] the queue's hash tag, ARGV[3..] payloads (as read
-- before the statuses were reset), each followed by its job id ('' when unparseable)
local sets = status_sets(7)
local L = lane_keys(11)
local moved = 0
for i = 3, #ARGV, 2 do
  if redis.call('LREM', KEYS[2], 1, ARGV[i]) > 0 then
    local owner = owner_of(ARGV[i])
    stopped(L, ARGV[2], owner)
    enlane(L, ARGV[2], KEYS[1], ARGV[i], ARGV[i + 1], owner, 0, true)
    moved = moved + 1
    if ARGV[i + 1] ~= '' then
      pending_first(KEYS[5], ARGV[i + 1])
      list_as(KEYS[6], sets, ARGV[i + 1], 'queued', ARGV[2], owner)
    end
  end
end
if redis.call('LLEN', KEYS[2]) == 0 and redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('SREM', KEYS[4], ARGV[1])
end
return moved
