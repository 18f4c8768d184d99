-- Puts a job's webhook record in the outbox, due at a time; refuses a new entry
-- when the outbox is full.
-- KEYS[1] the record hash, KEYS[2] the outbox (zset: job id -> due ms)
-- ARGV[1] record JSON, ARGV[2] due ms, ARGV[3] TTL ms, ARGV[4] cap, ARGV[5] job id
if not redis.call('ZSCORE', KEYS[2], ARGV[5])
  and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'lease', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[5])
return 1
