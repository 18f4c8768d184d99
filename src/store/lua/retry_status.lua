-- Hands a running job back for a delayed retry, or fails it for good.
-- KEYS[1] job:status:<id>
-- ARGV[1] channel, ARGV[2] lease token, ARGV[3] now (ISO), ARGV[4] now (ms),
-- ARGV[5] ttl seconds, ARGV[6] due (ms), ARGV[7] error, ARGV[8] max attempts
-- Returns {'scheduled'} | {'dead', attempts, message} | {'cancelled'} | {'lost'}
if redis.call('HGET', KEYS[1], 'lease_token') ~= ARGV[2] then return {'lost'} end
if redis.call('HGET', KEYS[1], 'status') ~= 'processing' then return {'lost'} end
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0') or 0
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'error', 'cancelled', 'cancelled', '1',
    'updated_at', ARGV[3], 'updated_ms', ARGV[4])
  redis.call('HDEL', KEYS[1], 'lease_token', 'payload')
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  publish_snapshot(ARGV[1], KEYS[1])
  return {'cancelled'}
end
if attempt >= tonumber(ARGV[8]) then
  local msg = 'gave up after ' .. attempt .. ' attempt'
  if attempt ~= 1 then msg = msg .. 's' end
  msg = msg .. '; last error: ' .. ARGV[7]
  redis.call('HSET', KEYS[1], 'status', 'failed', 'error', msg, 'last_error', ARGV[7],
    'updated_at', ARGV[3], 'updated_ms', ARGV[4])
  redis.call('HDEL', KEYS[1], 'lease_token', 'payload')
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  publish_snapshot(ARGV[1], KEYS[1])
  return {'dead', tostring(attempt), msg}
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'progress', '0', 'last_error', ARGV[7],
  'retry_at', ARGV[6], 'updated_at', ARGV[3], 'updated_ms', ARGV[4])
redis.call('HDEL', KEYS[1], 'lease_token', 'worker_id')
redis.call('EXPIRE', KEYS[1], ARGV[5])
publish_snapshot(ARGV[1], KEYS[1])
return {'scheduled'}
