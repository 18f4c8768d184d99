-- Claims the next job, fairly: of the owners' lanes with work (and room to run
-- more) and job_queue, the one with the lowest virtual time; within a lane, the
-- first by priority and arrival. The entry moves to the worker's processing list.
-- KEYS[1] job_queue, KEYS[2] {job_queue}:processing:<worker>, KEYS[3..10] lane keys
-- ARGV[1] the queue's hash tag, ARGV[2] this claim's id, ARGV[3] how long its
-- answer is kept (ms)
-- Returns the queue entry, or false when nothing waits
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
for _ = 1, 10 do
  local V = num(redis.call('GET', L.vtime))
  local owner, start = nil, nil
  local top = redis.call('ZRANGE', L.lanes, 0, 0, 'WITHSCORES')
  if top[1] then owner, start = top[1], tonumber(top[2]) end
  if redis.call('LLEN', KEYS[1]) > 0 then
    local legacy = math.max(V, num(redis.call('HGET', L.vt, '')))
    if start == nil or legacy < start then owner, start = '', legacy end
  end
  if owner == nil then return false end
  local payload
  if owner == '' then
    payload = redis.call('RPOP', KEYS[1])
  else
    local lane = lane_of(tag, owner)
    local first = redis.call('ZRANGE', lane, 0, 0)
    if first[1] then
      redis.call('ZREM', lane, first[1])
      payload = redis.call('HGET', L.entries, first[1])
      redis.call('HDEL', L.entries, first[1])
    end
    redis.call('ZREM', L.lanes, owner)
  end
  if payload then
    redis.call('LPUSH', KEYS[2], payload)
    redis.call('SET', claim_key, payload, 'PX', ARGV[3])
    redis.call('SET', L.vtime, start)
    local next_vt = start + 1 / math.max(1, num(redis.call('HGET', L.weight, owner)))
    redis.call('HSET', L.vt, owner, next_vt)
    redis.call('HINCRBY', L.running, owner, 1)
    activate(L, tag, owner)
    return payload
  end
  -- A lane with no entry left (cancelled): it has left `lanes`; look again.
end
return false
