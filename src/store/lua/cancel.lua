-- Cancels a job: a queued one fails at once, a running one is flagged for its worker.
-- KEYS[1] job:status:<id>
-- ARGV[1] channel, ARGV[2] now (ISO), ARGV[3] now (ms), ARGV[4] ttl seconds
-- Returns {'missing'} | {'final'} | {'requested'} | {'cancelled', owner}
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'finished' or st == 'failed' then return {'final'} end
if st == 'processing' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1', 'updated_at', ARGV[2], 'updated_ms', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  publish_snapshot(ARGV[1], KEYS[1])
  return {'requested'}
end
redis.call('HSET', KEYS[1], 'status', 'failed', 'error', 'cancelled', 'cancelled', '1',
  'cancel_requested', '1', 'updated_at', ARGV[2], 'updated_ms', ARGV[3])
redis.call('HDEL', KEYS[1], 'lease_token')
redis.call('EXPIRE', KEYS[1], ARGV[4])
publish_snapshot(ARGV[1], KEYS[1])
return {'cancelled', redis.call('HGET', KEYS[1], 'owner_key') or ''}
