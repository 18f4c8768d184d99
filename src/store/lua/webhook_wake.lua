-- Makes a job's webhook due now (its job changed), unless a worker holds it (that
-- worker reads the job again before it lets go) or it is due already.
-- KEYS[1] the record hash, KEYS[2] the outbox; ARGV[1] now ms, ARGV[2] job id
local s = redis.call('ZSCORE', KEYS[2], ARGV[2])
if not s then return 0 end
local now = tonumber(ARGV[1])
if tonumber(s) <= now then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'lease') or '0') > now then return 0 end
redis.call('ZADD', KEYS[2], now, ARGV[2])
return 1
