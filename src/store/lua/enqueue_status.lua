-- A new job's status hash. Enqueueing is idempotent by job id: an existing hash is
-- left alone (and the caller does not push the job again). The change is announced
-- by enqueue_push.lua, once the job is really queued.
-- KEYS[1] job:status:<id>
-- ARGV[1] ttl seconds, ARGV[2..] field, value, ...
-- Returns 1 created, 0 already there
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
