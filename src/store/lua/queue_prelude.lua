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
-- A queue entry's fields (none when it is not a JSON object).
local function fields_of(payload)
  local ok, decoded = pcall(cjson.decode, payload)
  if ok and type(decoded) == 'table' then return decoded end
  return {}
end

-- A string field of a queue entry, '' when absent or not a string.
local function field_of(payload, name)
  local v = fields_of(payload)[name]
  if type(v) == 'string' then return v end
  return ''
end

local function owner_of(payload)
  return field_of(payload, 'owner_key')
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

-- Fair claims. Jobs without an owner wait on job_queue, as in the prototype; each
-- owner's jobs wait in a lane of their own, a sorted set of job ids scored by
-- priority, then order of arrival, their queue entries in one hash. Owners with
-- work waiting are in `lanes`, scored by virtual time: a claim serves the lowest,
-- and serving a lane moves it on by 1 / weight (start-time fair queuing). A lane
-- that comes back after being idle starts at the current virtual time, so waiting
-- earns no credit.

-- The lane keys, from eight consecutive KEYS starting at `at`.
local function lane_keys(at)
  return {lanes = KEYS[at], entries = KEYS[at + 1], vt = KEYS[at + 2],
    weight = KEYS[at + 3], cap = KEYS[at + 4], running = KEYS[at + 5],
    blocked = KEYS[at + 6], vtime = KEYS[at + 7]}
end

local function num(v)
  return tonumber(v or '0') or 0
end

local function lane_of(tag, owner)
  return tag .. ':lane:' .. owner
end

-- The requirement set a queue entry names ('' for none: any backend runs it).
local function req_of(payload)
  return field_of(payload, 'req')
end

-- Within an owner's lane, each requirement set's jobs are also indexed in a
-- sub-lane of their own (same scores), and the sets the owner has waiting are in
-- a set, so a claim finds the first job a backend can run without walking past
-- the ones it cannot. Sub-lanes are cleaned lazily: an id no longer in the lane
-- is dropped when it comes to the head.
local function sublane_of(tag, owner, req)
  return tag .. ':lane:' .. owner .. ':req:' .. req
end

local function reqs_of(tag, owner)
  return tag .. ':lane:' .. owner .. ':reqs'
end

local function drop_sublanes(tag, owner)
  local rset = reqs_of(tag, owner)
  for _, r in ipairs(redis.call('SMEMBERS', rset)) do
    redis.call('DEL', sublane_of(tag, owner, r))
  end
  redis.call('DEL', rset)
end

-- Claims serve high first, then normal, then low; in arrival order within each.
local PRIORITY_BAND = 17592186044416 -- 2^44: room for any sequence number
-- `priority` (the payload's, read from it when nil).
local function lane_score(payload, seq, priority)
  local rank = 1
  priority = priority or field_of(payload, 'priority')
  if priority == 'high' then rank = 0 elseif priority == 'low' then rank = 2 end
  return rank * PRIORITY_BAND + seq
end

-- Puts an owner's lane among those served, unless it is there already, empty, or
-- at its cap on running jobs (then it waits in `blocked`).
local function activate(L, tag, owner)
  if owner == '' or redis.call('ZSCORE', L.lanes, owner) then return end
  if redis.call('ZCARD', lane_of(tag, owner)) == 0 then
    redis.call('SREM', L.blocked, owner)
    drop_sublanes(tag, owner)
    return
  end
  local cap = num(redis.call('HGET', L.cap, owner))
  if cap > 0 and num(redis.call('HGET', L.running, owner)) >= cap then
    redis.call('SADD', L.blocked, owner)
    return
  end
  redis.call('SREM', L.blocked, owner)
  local v = math.max(num(redis.call('GET', L.vtime)), num(redis.call('HGET', L.vt, owner)))
  redis.call('ZADD', L.lanes, v, owner)
end

-- A job of `owner` stopped running: one fewer running, and its lane may be served
-- again.
local function stopped(L, tag, owner)
  if num(redis.call('HGET', L.running, owner)) > 0 then
    redis.call('HINCRBY', L.running, owner, -1)
  end
  if redis.call('SISMEMBER', L.blocked, owner) == 1 then
    redis.call('SREM', L.blocked, owner)
    activate(L, tag, owner)
  end
end

-- Queues an entry in its lane (job_queue for one without an owner): at `score`,
-- or first in line when `front`.
-- `req`: the payload's requirement set (read from it when nil).
local function enlane(L, tag, queue, payload, job_id, owner, score, front, req)
  if owner == '' then
    if front then redis.call('RPUSH', queue, payload) else redis.call('LPUSH', queue, payload) end
    return
  end
  local lane = lane_of(tag, owner)
  if front then
    local first = redis.call('ZRANGE', lane, 0, 0, 'WITHSCORES')
    score = first[2] and (tonumber(first[2]) - 1) or 0
  end
  redis.call('ZADD', lane, score, job_id)
  redis.call('HSET', L.entries, job_id, payload)
  req = req or req_of(payload)
  redis.call('ZADD', sublane_of(tag, owner, req), score, job_id)
  redis.call('SADD', reqs_of(tag, owner), req)
  activate(L, tag, owner)
end
