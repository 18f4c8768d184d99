-- Shared by the scripts that put a job back first in line (prepended by redis.rs).
-- Gives the job a `{job_queue}:pending` score below every other, so
-- `queue_position` counts it first.
local function pending_first(pending, job_id)
  local first = redis.call('ZRANGE', pending, 0, 0, 'WITHSCORES')
  local score = 0
  if first[2] then score = tonumber(first[2]) - 1 end
  redis.call('ZADD', pending, score, job_id)
end
