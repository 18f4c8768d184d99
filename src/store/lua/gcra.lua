-- One request against a GCRA rate limit (a token bucket kept as one number: the
-- theoretical arrival time of the next request, in ms).
-- KEYS[1] the bucket
-- ARGV[1] now (ms), ARGV[2] emission interval (ms), ARGV[3] burst
-- Returns {allowed 0|1, remaining, reset (ms), retry after (ms)}
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local capacity = interval * tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - capacity
if now < allow_at then
  return {0, 0, math.ceil(tat - now), math.ceil(allow_at - now)}
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
local used = new_tat - now
return {1, math.floor((capacity - used) / interval), math.ceil(used), 0}
