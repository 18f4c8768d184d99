-- Records one attempt's usage account once, and adds its GPU time to its key's
-- spend for the day and the month.
-- KEYS[1] the day's accounts (hash: job:attempt -> JSON), KEYS[2] the owner's
-- spend (hash: d:<day> / m:<month> -> ms)
-- ARGV[1] field, ARGV[2] JSON, ARGV[3] accounts' ttl (s), ARGV[4] day field,
-- ARGV[5] month field, ARGV[6] gpu ms, ARGV[7] owner ('' for none), ARGV[8] spend ttl (s)
-- Returns 1 when recorded, 0 when that attempt had an account already
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[1], ARGV[3])
if ARGV[7] ~= '' and tonumber(ARGV[6]) > 0 then
  redis.call('HINCRBY', KEYS[2], ARGV[4], ARGV[6])
  redis.call('HINCRBY', KEYS[2], ARGV[5], ARGV[6])
  redis.call('EXPIRE', KEYS[2], ARGV[8])
end
return 1
