-- Puts a job's webhook record in the outbox, due at a time; refuses a new entry
-- when the outbox is full (0), or when its owner has its cap waiting (-1).
-- KEYS[1] the record hash, KEYS[2] the outbox (zset: job id -> due ms),
-- KEYS[3] the owners (hash: job id -> owner), KEYS[4] the owner's entries (set)
-- ARGV[1] record JSON, ARGV[2] due ms, ARGV[3] TTL ms, ARGV[4] cap,
-- ARGV[5] job id, ARGV[6] owner, ARGV[7] the owner's cap
if not redis.call('ZSCORE', KEYS[2], ARGV[5]) then
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return 0 end
  if redis.call('SCARD', KEYS[4]) >= tonumber(ARGV[7]) then return -1 end
end
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'lease', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[5])
redis.call('HSET', KEYS[3], ARGV[5], ARGV[6])
redis.call('SADD', KEYS[4], ARGV[5])
return 1
