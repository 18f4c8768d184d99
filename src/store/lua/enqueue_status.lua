-- A new job's status hash.
-- KEYS[1] job:status:<id>
-- ARGV[1] events channel, ARGV[2] ttl seconds, ARGV[3..] field, value, ...
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
publish_snapshot(ARGV[1], KEYS[1])
return 1
