-- Claims the next job this backend can run, fairly: of the owners' lanes with
-- such a job (and room to run more) and job_queue, the one with the lowest
-- virtual time; within a lane, the first by priority and arrival, or a preferred
-- one (same model files as the backend's last job) close behind it. The entry
-- moves to the worker's processing list.
-- KEYS[1] job_queue, KEYS[2] {job_queue}:processing:<worker>, KEYS[3..10] lane keys,
-- KEYS[11] the registered requirement sets
-- ARGV[1] the queue's hash tag, ARGV[2] this claim's id, ARGV[3] how long its
-- answer is kept (ms), ARGV[4] how many sets were registered when the route was
-- made (-1: any job will do), ARGV[5] n, ARGV[6..5+n] the sets this backend can
-- run, ARGV[6+n] m, then m preferred sets, ARGV[7+n+m] how far behind the first
-- job (in sequence numbers) a preferred one may be taken
-- Returns the queue entry, false when nothing it may run waits, or 'stale' when
-- sets were registered since the route was made
--
-- A claim whose answer was lost (a timeout, a cut link: the request may still
-- arrive and run later) is asked again with the same id, and answered with the
-- entry it moved then, instead of moving another one into the list of a worker
-- that does not know it holds it.
local L = lane_keys(3)
local tag = ARGV[1]
local claim_key = tag .. ':claim:' .. ARGV[2]
local before = redis.call('GET', claim_key)
if before and redis.call('LPOS', KEYS[2], before) then return before end

local runnable, prefer, window = nil, {}, 0
if tonumber(ARGV[4]) >= 0 then
  if redis.call('HLEN', KEYS[11]) ~= tonumber(ARGV[4]) then return 'stale' end
  runnable = {[''] = true}
  local n = tonumber(ARGV[5])
  for i = 1, n do runnable[ARGV[5 + i]] = true end
  local m = tonumber(ARGV[6 + n])
  for i = 1, m do prefer[ARGV[6 + n + i]] = true end
  window = tonumber(ARGV[7 + n + m])
end

-- How many entries at job_queue's consuming end a routed claim moves out of the
-- way, at most, before it gives up for this time.
local QUEUE_WINDOW = 100
local PARKED_SETS = tag .. ':parked-sets'
local function parked_of(r) return tag .. ':parked:' .. r end

-- A preferred entry among the `window` entries after job_queue's consuming end
-- (the end itself too, unless `skip_end`), removed; nil when there is none.
local function preferred_in_queue(skip_end)
  if next(prefer) == nil then return nil end
  local tail = redis.call('LRANGE', KEYS[1], -(window + 1), -1)
  local last = #tail
  if skip_end then last = last - 1 end
  for i = last, 1, -1 do
    if prefer[req_of(tail[i])] then
      redis.call('LREM', KEYS[1], -1, tail[i])
      return tail[i]
    end
  end
  return nil
end

local function take_parked(id, r)
  redis.call('ZREM', parked_of(r), id)
  local payload = redis.call('HGET', L.entries, id)
  redis.call('HDEL', L.entries, id)
  return payload
end

-- The entry of the ownerless lane to take, removed; nil when there is none this
-- backend can run. Entries of job_queue that it cannot run (ours: they name a
-- requirement set) are parked by set as the claim meets them at the consuming
-- end, in that order, so they keep their age: a parked entry is older than
-- anything still in job_queue, and a claim that can run it takes it first. A
-- preferred entry close behind the first is taken instead of it.
local function take_from_queue()
  local best, best_s, best_r, pref, pref_s, pref_r
  for _, r in ipairs(redis.call('SMEMBERS', PARKED_SETS)) do
    if runnable == nil or runnable[r] then
      local head = redis.call('ZRANGE', parked_of(r), 0, 0, 'WITHSCORES')
      if not head[1] then
        redis.call('SREM', PARKED_SETS, r)
      else
        local s = tonumber(head[2])
        if not best or s < best_s then best, best_s, best_r = head[1], s, r end
        if prefer[r] and (not pref or s < pref_s) then pref, pref_s, pref_r = head[1], s, r end
      end
    end
  end
  if best then
    if pref and pref_s - best_s <= window then return take_parked(pref, pref_r) end
    if not prefer[best_r] then
      local p = preferred_in_queue(false)
      if p then return p end
    end
    return take_parked(best, best_r)
  end
  if runnable == nil then return redis.call('RPOP', KEYS[1]) end
  for _ = 1, QUEUE_WINDOW do
    local e = redis.call('LINDEX', KEYS[1], -1)
    if not e then return nil end
    local r = req_of(e)
    if runnable[r] then
      if not prefer[r] then
        local p = preferred_in_queue(true)
        if p then return p end
      end
      return redis.call('RPOP', KEYS[1])
    end
    redis.call('RPOP', KEYS[1])
    local id = field_of(e, 'job_id')
    redis.call('HSET', L.entries, id, e)
    redis.call('ZADD', parked_of(r), redis.call('INCR', tag .. ':park-seq'), id)
    redis.call('SADD', PARKED_SETS, r)
  end
  return nil
end

-- Indexes a lane written before sub-lanes existed (an upgrade).
local function index_lane(owner, lane)
  local ids = redis.call('ZRANGE', lane, 0, -1, 'WITHSCORES')
  for i = 1, #ids, 2 do
    local r = req_of(redis.call('HGET', L.entries, ids[i]) or '')
    redis.call('ZADD', sublane_of(tag, owner, r), ids[i + 1], ids[i])
    redis.call('SADD', reqs_of(tag, owner), r)
  end
end

-- The job of an owner's lane to take: its id and sub-lane; false when the lane is
-- empty, nil when nothing in it is runnable here.
local function pick_in_lane(owner)
  local lane = lane_of(tag, owner)
  if redis.call('ZCARD', lane) == 0 then return false end
  local rset = reqs_of(tag, owner)
  if runnable == nil then
    local first = redis.call('ZRANGE', lane, 0, 0)
    return first[1], nil
  end
  if redis.call('SCARD', rset) == 0 then index_lane(owner, lane) end
  local best, best_s, best_r, pref, pref_s, pref_r
  for _, r in ipairs(redis.call('SMEMBERS', rset)) do
    if runnable[r] then
      local sub = sublane_of(tag, owner, r)
      while true do
        local head = redis.call('ZRANGE', sub, 0, 0)
        if not head[1] then
          redis.call('SREM', rset, r)
          break
        end
        local s = redis.call('ZSCORE', lane, head[1])
        if s then
          s = tonumber(s)
          if not best or s < best_s then best, best_s, best_r = head[1], s, r end
          if prefer[r] and (not pref or s < pref_s) then pref, pref_s, pref_r = head[1], s, r end
          break
        end
        redis.call('ZREM', sub, head[1])
      end
    end
  end
  if pref and math.floor(pref_s / PRIORITY_BAND) == math.floor(best_s / PRIORITY_BAND)
      and pref_s - best_s <= window then
    return pref, pref_r
  end
  return best, best_r
end

local V = num(redis.call('GET', L.vtime))

-- Moves `payload` to the worker's list and moves the owner's lane on.
local function serve(owner, start, payload)
  redis.call('LPUSH', KEYS[2], payload)
  redis.call('SET', claim_key, payload, 'PX', ARGV[3])
  redis.call('SET', L.vtime, math.max(V, start))
  local next_vt = start + 1 / math.max(1, num(redis.call('HGET', L.weight, owner)))
  redis.call('HSET', L.vt, owner, next_vt)
  redis.call('HINCRBY', L.running, owner, 1)
  if owner ~= '' then redis.call('ZREM', L.lanes, owner) end
  activate(L, tag, owner)
  return payload
end

local empty = {}
local function try(owner, start)
  if owner == '' then
    local payload = take_from_queue()
    return payload and serve('', start, payload)
  end
  local id, r = pick_in_lane(owner)
  if id == false then
    table.insert(empty, owner)
    return nil
  end
  if not id then return nil end
  redis.call('ZREM', lane_of(tag, owner), id)
  if r then redis.call('ZREM', sublane_of(tag, owner, r), id) end
  local payload = redis.call('HGET', L.entries, id)
  redis.call('HDEL', L.entries, id)
  return payload and serve(owner, start, payload)
end

local queue_at = nil
if redis.call('LLEN', KEYS[1]) > 0 or redis.call('SCARD', PARKED_SETS) > 0 then
  queue_at = math.max(V, num(redis.call('HGET', L.vt, '')))
end
local found = nil
local offset, BATCH = 0, 100
while not found do
  local batch = redis.call('ZRANGE', L.lanes, offset, offset + BATCH - 1, 'WITHSCORES')
  for i = 1, #batch, 2 do
    local owner, start = batch[i], tonumber(batch[i + 1])
    if queue_at and queue_at < start then
      found = try('', queue_at)
      queue_at = nil
      if found then break end
    end
    found = try(owner, start)
    if found then break end
  end
  if #batch < 2 * BATCH then break end
  offset = offset + BATCH
end
if not found and queue_at then found = try('', queue_at) end
-- Lanes found empty (their jobs cancelled) leave `lanes`.
for _, owner in ipairs(empty) do
  redis.call('ZREM', L.lanes, owner)
  activate(L, tag, owner)
end
return found or false
