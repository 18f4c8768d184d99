-- A whole submission in one step, outside a Redis Cluster (where the status hash
-- and the queue may live on different nodes, enqueue_status.lua then
-- enqueue_push.lua do it in two): the request counted against its rate limit,
-- the status hash unless the job id is taken, and push_job() (enqueue_push.lua)
-- with every key and argument it takes.
-- KEYS[18] job:status:<id>, KEYS[19] the rate bucket (when ARGV[18] is not '')
-- ARGV[17] the hash's ttl in seconds, ARGV[18] now (ms; '' for no rate limit),
-- ARGV[19] the limit's emission interval (ms), ARGV[20] its burst,
-- ARGV[21..] field, value, ...
-- Returns {answer, then the rate limit's four figures when it has one}: the
-- answer is push_job()'s (nothing is written unless it is a sequence number),
-- 0 when the job id is taken (its hash is left alone), -5 when the rate limit
-- refuses the request.
local rate = {}
if ARGV[18] ~= '' then
  rate = gcra(KEYS[19], tonumber(ARGV[18]), tonumber(ARGV[19]), tonumber(ARGV[20]))
  if rate[1] == 0 then return {-5, rate[1], rate[2], rate[3], rate[4]} end
end
local seq = 0
if redis.call('EXISTS', KEYS[18]) == 0 then
  seq = push_job()
  if seq > 0 then
    redis.call('HSET', KEYS[18], unpack(ARGV, 21))
    redis.call('EXPIRE', KEYS[18], ARGV[17])
  end
end
return {seq, rate[1], rate[2], rate[3], rate[4]}
