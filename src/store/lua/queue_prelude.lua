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

-- The owner named in a queue entry (our entries carry it; others' do not).
local function owner_of(payload)
  local ok, decoded = pcall(cjson.decode, payload)
  if ok and type(decoded) == 'table' and type(decoded['owner_key']) == 'string' then
    return decoded['owner_key']
  end
  return ''
end

-- An owner's own listing indexes (all its jobs, and by status), named from the
-- queue's hash tag so they share its slot.
local function owner_keys(tag, owner)
  local base = tag .. ':owner:' .. owner
  return base .. ':index', {queued = base .. ':status:queued',
    processing = base .. ':status:processing', finished = base .. ':status:finished',
    failed = base .. ':status:failed'}
end

-- Lists a job under `status` only (with its listing score from `index`), in the
-- global indexes and, when it has an owner, in the owner's. '' leaves it as it
-- is; 'gone' removes it from the listing altogether.
local function list_as(index, sets, job_id, status, tag, owner)
  if status == '' then return end
  local score = redis.call('ZSCORE', index, job_id)
  local all = {{index, sets}}
  if tag and owner and owner ~= '' then
    local oindex, osets = owner_keys(tag, owner)
    all[2] = {oindex, osets}
  end
  for i, pair in ipairs(all) do
    for name, key in pairs(pair[2]) do
      if name ~= status then redis.call('ZREM', key, job_id) end
    end
    if status == 'gone' then
      redis.call('ZREM', pair[1], job_id)
    elseif score and pair[2][status] then
      redis.call('ZADD', pair[2][status], score, job_id)
      if i > 1 then redis.call('ZADD', pair[1], score, job_id) end
    end
  end
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
