-- One request against a GCRA rate limit (a token bucket kept as one number: the
-- theoretical arrival time of the next request, in ms): bucket key, now (ms),
-- emission interval (ms), burst.
-- Returns {allowed 0|1, remaining, reset (ms), retry after (ms)}
local function gcra(bucket, now, interval, burst)
  local capacity = interval * burst
  local tat = tonumber(redis.call('GET', bucket) or '0') or 0
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - capacity
  if now < allow_at then
    return {0, 0, math.ceil(tat - now), math.ceil(allow_at - now)}
  end
  redis.call('SET', bucket, tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
  local used = new_tat - now
  return {1, math.floor((capacity - used) / interval), math.ceil(used), 0}
end
