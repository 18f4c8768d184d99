-- Hands a running job back untouched (graceful shutdown); the attempt does not count.
-- KEYS[1] job:status:<id>
-- ARGV[1] channel, ARGV[2] lease token, ARGV[3] now (ISO), ARGV[4] now (ms), ARGV[5] ttl
if redis.call('HGET', KEYS[1], 'lease_token') ~= ARGV[2] then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= 'processing' then return 0 end
redis.call('HINCRBY', KEYS[1], 'attempt', -1)
redis.call('HSET', KEYS[1], 'status', 'queued', 'progress', '0',
  'updated_at', ARGV[3], 'updated_ms', ARGV[4])
redis.call('HDEL', KEYS[1], 'lease_token', 'worker_id')
redis.call('EXPIRE', KEYS[1], ARGV[5])
publish_snapshot(ARGV[1], KEYS[1])
return 1
