-- The reaper's half on the status hash: a job held by a dead worker goes back to
-- queued, and its lease token is dropped, so the dead worker (if it was only
-- paused) is fenced off.
-- KEYS[1] job:status:<id>
-- ARGV[1] channel, ARGV[2] dead worker id, ARGV[3] now (ISO), ARGV[4] now (ms), ARGV[5] ttl
if redis.call('HGET', KEYS[1], 'status') ~= 'processing' then return 0 end
if redis.call('HGET', KEYS[1], 'worker_id') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'progress', '0',
  'updated_at', ARGV[3], 'updated_ms', ARGV[4])
redis.call('HDEL', KEYS[1], 'lease_token', 'worker_id')
redis.call('EXPIRE', KEYS[1], ARGV[5])
publish_snapshot(ARGV[1], KEYS[1])
return 1
