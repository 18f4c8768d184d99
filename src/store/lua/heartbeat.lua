-- A worker is alive: its heartbeat key is renewed and it is in the registry (again,
-- if a reaper had removed it while it was paused).
-- KEYS[1] {job_queue}:hb:<worker>, KEYS[2] {job_queue}:workers
-- ARGV[1] worker id, ARGV[2] ttl (ms), ARGV[3] now (ms)
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
