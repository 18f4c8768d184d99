-- Shared by every script that changes a status hash (prepended by redis.rs), and
-- called once per change: raises the hash's revision (event consumers order changes
-- by it, not by clocks), then publishes the hash, minus the lease token and the raw
-- payload, as a JSON object of strings on the events channel: every API process
-- fans it out to SSE clients.
local function publish_snapshot(channel, key)
  redis.call('HINCRBY', key, 'rev', 1)
  local flat = redis.call('HGETALL', key)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  t['lease_token'] = nil
  t['payload'] = nil
  redis.call('PUBLISH', channel, cjson.encode(t))
end
