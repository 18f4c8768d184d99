-- Shared by the scripts that change the queue (prepended by redis.rs). Every key
-- they touch is in the {job_queue} slot.

-- Gives the job a `{job_queue}:pending` score below every other, so
-- `queue_position` counts it first.
local function pending_first(pending, job_id)
  local first = redis.call('ZRANGE', pending, 0, 0, 'WITHSCORES')
  local score = 0
  if first[2] then score = tonumber(first[2]) - 1 end
  redis.call('ZADD', pending, score, job_id)
end

-- The listing's per-status indexes, from four consecutive KEYS starting at `at`
-- (queued, processing, finished, failed): a filtered listing reads only them.
local function status_sets(at)
  return {queued = KEYS[at], processing = KEYS[at + 1], finished = KEYS[at + 2],
    failed = KEYS[at + 3]}
end

-- Lists a job under `status` only (with its listing score from `index`). '' leaves
-- it as it is; 'gone' removes it from the listing altogether.
local function list_as(index, sets, job_id, status)
  if status == '' then return end
  for name, key in pairs(sets) do
    if name ~= status then redis.call('ZREM', key, job_id) end
  end
  if status == 'gone' then
    redis.call('ZREM', index, job_id)
    return
  end
  local score = redis.call('ZSCORE', index, job_id)
  if score and sets[status] then redis.call('ZADD', sets[status], score, job_id) end
end

-- Keeps the listing at its cap: the oldest entries leave every index.
local function trim_index(index, sets, cap)
  local over = redis.call('ZCARD', index) - cap
  if over <= 0 then return end
  local old = redis.call('ZRANGE', index, 0, over - 1)
  redis.call('ZREMRANGEBYRANK', index, 0, over - 1)
  for _, id in ipairs(old) do
    for _, key in pairs(sets) do redis.call('ZREM', key, id) end
  end
end
