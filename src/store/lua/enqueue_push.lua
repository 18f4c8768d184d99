-- Puts a job in its lane (job_queue when it has no owner) and into the listing
-- and position indexes, unless the queue is full (counted as our jobs listed
-- `queued`: waiting or due for a retry) or the owner has its maximum waiting;
-- registers the job's requirement set first; then announces the job.
-- KEYS[1] job_queue, KEYS[2] {job_queue}:index, KEYS[3] {job_queue}:pending,
-- KEYS[4] {job_queue}:seq, KEYS[5..8] status indexes, KEYS[9..16] lane keys,
-- KEYS[17] the registered requirement sets
-- ARGV[1] payload, ARGV[2] job id, ARGV[3] index cap, ARGV[4] most jobs waiting,
-- ARGV[5] events channel, ARGV[6] the new job's event (JSON), ARGV[7] the queue's
-- hash tag, ARGV[8] the owner ('' for none), ARGV[9] most jobs waiting for the
-- owner (0: no limit), ARGV[10] the owner's weight, ARGV[11] its cap on running
-- jobs (0: none), ARGV[12] jobs of the same batch that follow (which must fit too),
-- ARGV[13] the job's requirement set ('' for none), ARGV[14] its JSON ('' when
-- the caller believes it registered), ARGV[15] the most sets registered,
-- ARGV[16] its priority (as in the payload, which is not decoded here)
-- push_job() returns the job's sequence number; -1 when the queue is full, -2 when
-- the owner has its maximum waiting, -3 when the set is new and the registry full,
-- -4 when the set is not registered and its JSON was not given
local function push_job()
  local sets = status_sets(5)
  local following = tonumber(ARGV[12] or '0')
  if redis.call('ZCARD', sets.queued) + following >= tonumber(ARGV[4]) then return -1 end
  local owner, tag = ARGV[8], ARGV[7]
  local oindex, osets
  if owner ~= '' then
    oindex, osets = owner_keys(tag, owner)
    local limit = tonumber(ARGV[9])
    if limit > 0 and redis.call('ZCARD', osets.queued) + following >= limit then return -2 end
  end
  local req = ARGV[13]
  if req ~= '' and redis.call('HEXISTS', KEYS[17], req) == 0 then
    if ARGV[14] == '' then return -4 end
    if redis.call('HLEN', KEYS[17]) >= tonumber(ARGV[15]) then return -3 end
    redis.call('HSET', KEYS[17], req, ARGV[14])
  end
  local L = lane_keys(9)
  local seq = redis.call('INCR', KEYS[4])
  if owner ~= '' then
    redis.call('HSET', L.weight, owner, ARGV[10])
    redis.call('HSET', L.cap, owner, ARGV[11])
  end
  -- Only an owner's lane is ordered by score.
  local score = 0
  if owner ~= '' then score = lane_score(ARGV[1], seq, ARGV[16]) end
  enlane(L, tag, KEYS[1], ARGV[1], ARGV[2], owner, score, false, req)
  redis.call('ZADD', KEYS[2], seq, ARGV[2])
  redis.call('ZADD', KEYS[3], seq, ARGV[2])
  redis.call('ZADD', sets.queued, seq, ARGV[2])
  if owner ~= '' then
    redis.call('ZADD', oindex, seq, ARGV[2])
    redis.call('ZADD', osets.queued, seq, ARGV[2])
    trim_index(oindex, osets, tonumber(ARGV[3]))
  end
  trim_index(KEYS[2], sets, tonumber(ARGV[3]))
  redis.call('PUBLISH', ARGV[5], ARGV[6])
  return seq
end
