-- Writes what a delivery did, if the lease is still the caller's: the record, and
-- the entry due again at ARGV[2] (or out of the outbox when ARGV[2] is '').
-- KEYS[1] the record hash, KEYS[2] the outbox, KEYS[3] the owners
-- ARGV[1] record JSON, ARGV[2] due ms or '', ARGV[3] TTL ms, ARGV[4] job id,
-- ARGV[5] the lease the caller holds, ARGV[6] the owner sets' prefix
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[5] then return 0 end
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'lease', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if ARGV[2] == '' then
  out_of_outbox(KEYS[2], KEYS[3], ARGV[6], ARGV[4])
else
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
end
return 1
