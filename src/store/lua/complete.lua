-- Records a job's outcome, only for the current lease holder of a running job.
-- KEYS[1] job:status:<id>
-- ARGV[1] channel, ARGV[2] lease token, ARGV[3] 'finished' | 'failed', ARGV[4] now
-- (ISO), ARGV[5] now (ms), ARGV[6] ttl seconds, ARGV[7..] field, value pairs
-- Returns 1 written, 0 refused
if redis.call('HGET', KEYS[1], 'lease_token') ~= ARGV[2] then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= 'processing' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'updated_at', ARGV[4], 'updated_ms', ARGV[5])
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[3] == 'finished' then redis.call('HSET', KEYS[1], 'progress', '100') end
redis.call('HDEL', KEYS[1], 'lease_token', 'payload')
redis.call('EXPIRE', KEYS[1], ARGV[6])
publish_snapshot(ARGV[1], KEYS[1])
return 1
