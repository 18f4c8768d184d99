-- Leases a claimed job to a worker, or says why it must be dropped.
-- KEYS[1] job:status:<id>
-- ARGV[1] channel, ARGV[2] worker id, ARGV[3] lease token, ARGV[4] now (ISO),
-- ARGV[5] now (ms), ARGV[6] max attempts, ARGV[7] ttl seconds,
-- ARGV[8] '1' when the payload is older than the time to live, ARGV[9] the error
-- of an expired job, ARGV[10..] field, value pairs from the payload, written only
-- where missing (a job pushed by another program may come without a status hash)
-- Returns {'ok', attempt, field, value, ...} | {'drop', reason} | {'dead', attempts, last_error}
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'finished' or st == 'failed' then return {'drop', st} end
if st == 'processing' and redis.call('HEXISTS', KEYS[1], 'lease_token') == 1 then
  if redis.call('HGET', KEYS[1], 'worker_id') ~= ARGV[2] then return {'drop', 'running'} end
  -- Leased to this very worker by a call whose answer was lost (the store went
  -- away before replying): the same claim, asked again; a new token, the same
  -- attempt.
  redis.call('HINCRBY', KEYS[1], 'attempt', -1)
end
local had_record = redis.call('EXISTS', KEYS[1]) == 1
for i = 10, #ARGV, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
if not had_record and ARGV[8] == '1' then
  -- Its record expired while it waited: it is too old to start now.
  redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[9],
    'updated_at', ARGV[4], 'updated_ms', ARGV[5])
  redis.call('EXPIRE', KEYS[1], ARGV[7])
  publish_snapshot(ARGV[1], KEYS[1])
  return {'drop', 'expired'}
end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'error', 'cancelled', 'cancelled', '1',
    'updated_at', ARGV[4], 'updated_ms', ARGV[5])
  redis.call('EXPIRE', KEYS[1], ARGV[7])
  publish_snapshot(ARGV[1], KEYS[1])
  return {'drop', 'cancelled'}
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
if attempt > tonumber(ARGV[6]) then
  local used = attempt - 1
  local last = redis.call('HGET', KEYS[1], 'last_error') or ''
  local msg = 'gave up after ' .. used .. ' attempt'
  if used ~= 1 then msg = msg .. 's' end
  if last ~= '' then msg = msg .. '; last error: ' .. last end
  redis.call('HSET', KEYS[1], 'status', 'failed', 'error', msg, 'attempt', used,
    'updated_at', ARGV[4], 'updated_ms', ARGV[5])
  redis.call('HDEL', KEYS[1], 'lease_token')
  redis.call('EXPIRE', KEYS[1], ARGV[7])
  publish_snapshot(ARGV[1], KEYS[1])
  return {'dead', tostring(used), msg}
end
redis.call('HSET', KEYS[1], 'status', 'processing', 'worker_id', ARGV[2],
  'lease_token', ARGV[3], 'updated_at', ARGV[4], 'updated_ms', ARGV[5],
  'progress', '0', 'retry_at', '0')
redis.call('EXPIRE', KEYS[1], ARGV[7])
publish_snapshot(ARGV[1], KEYS[1])
local out = {'ok', tostring(attempt)}
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat do out[#out + 1] = flat[i] end
return out
