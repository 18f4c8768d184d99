-- An owner's live uploads against its quota, in the owner's own slot.
-- KEYS[1] ZSET upload id -> expiry (ms); KEYS[2] HASH upload id -> size (bytes).
-- ARGV: id, size, expiry (ms), now (ms), max bytes, max count.
-- Returns 1 (recorded or renewed), -1 (over the count), -2 (over the bytes).
local id, size, expiry, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, 200)
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('HDEL', KEYS[2], unpack(gone))
end
if redis.call('ZSCORE', KEYS[1], id) then
  redis.call('ZADD', KEYS[1], 'GT', expiry, id)
else
  if redis.call('ZCARD', KEYS[1]) + 1 > tonumber(ARGV[6]) then return -1 end
  local used = 0
  for _, v in ipairs(redis.call('HVALS', KEYS[2])) do used = used + tonumber(v) end
  if used + size > tonumber(ARGV[5]) then return -2 end
  redis.call('ZADD', KEYS[1], expiry, id)
  redis.call('HSET', KEYS[2], id, size)
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local ttl = tonumber(last[2]) - now + 60000
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
