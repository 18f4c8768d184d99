-- Moves delayed retries that are due back to their lanes (job_queue for those
-- without an owner).
-- KEYS[1] {job_queue}:delayed, KEYS[2] job_queue, KEYS[3] {job_queue}:pending,
-- KEYS[4] {job_queue}:seq, KEYS[5..12] lane keys
-- ARGV[1] now (ms), ARGV[2] at most this many, ARGV[3] the queue's hash tag
local L = lane_keys(5)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, v in ipairs(due) do
  redis.call('ZREM', KEYS[1], v)
  local ok, decoded = pcall(cjson.decode, v)
  local id = ''
  if ok and type(decoded) == 'table' and type(decoded['job_id']) == 'string' then
    id = decoded['job_id']
  end
  local seq = redis.call('INCR', KEYS[4])
  local owner = owner_of(v)
  if id == '' then owner = '' end
  enlane(L, ARGV[3], KEYS[2], v, id, owner, lane_score(v, seq), false)
  if id ~= '' then redis.call('ZADD', KEYS[3], seq, id) end
end
return #due
