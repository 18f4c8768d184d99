-- Records a job's stored outputs, due for deletion at a time, and adds their
-- bytes to the owner's count; a job already recorded is left as it is.
-- KEYS[1] {q}:outputs (zset due -> job), KEYS[2] {q}:output-files (hash job -> JSON),
-- KEYS[3] {q}:stored (hash owner -> bytes)
-- ARGV[1] job id, ARGV[2] JSON, ARGV[3] due (ms), ARGV[4] owner, ARGV[5] bytes
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[3], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
