-- A lease holder's progress (never decreasing) and other running-state fields.
-- KEYS[1] job:status:<id>
-- ARGV[1] channel, ARGV[2] lease token, ARGV[3] progress or '' , ARGV[4] now (ISO),
-- ARGV[5] now (ms), ARGV[6] ttl seconds, ARGV[7..] field, value pairs (a field
-- named `?name` is set only when `name` has no value yet)
-- Returns -1 lease lost, 1 held, 2 held and cancel requested
if redis.call('HGET', KEYS[1], 'lease_token') ~= ARGV[2] then return -1 end
local changed = false
if ARGV[3] ~= '' then
  local cur = tonumber(redis.call('HGET', KEYS[1], 'progress') or '0') or 0
  local p = tonumber(ARGV[3])
  if p > cur then
    redis.call('HSET', KEYS[1], 'progress', ARGV[3])
    changed = true
  end
end
for i = 7, #ARGV, 2 do
  if string.sub(ARGV[i], 1, 1) == '?' then
    if redis.call('HSETNX', KEYS[1], string.sub(ARGV[i], 2), ARGV[i + 1]) == 1 then
      changed = true
    end
  elseif redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    changed = true
  end
end
if changed then
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[4], 'updated_ms', ARGV[5])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  publish_snapshot(ARGV[1], KEYS[1])
end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then return 2 end
return 1
