-- Takes up to ARGV[3] due webhooks under a lease until now + ARGV[2]: each entry
-- becomes due again at the lease's end (a worker that dies leaves it to another).
-- Entries whose record expired are dropped.
-- KEYS[1] the outbox, KEYS[2] the owners; ARGV[1] now ms, ARGV[2] lease ms,
-- ARGV[3] most, ARGV[4] the record hashes' prefix (same slot: `{tag}:webhook:`),
-- ARGV[5] the owner sets' prefix
-- Returns id, record, lease, id, record, lease, ...
local now = tonumber(ARGV[1])
local till = now + tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(due) do
  local h = ARGV[4] .. id
  local rec = redis.call('HGET', h, 'rec')
  if rec then
    redis.call('HSET', h, 'lease', till)
    redis.call('ZADD', KEYS[1], till, id)
    out[#out + 1] = id
    out[#out + 1] = rec
    out[#out + 1] = tostring(till)
  else
    out_of_outbox(KEYS[1], KEYS[2], ARGV[5], id)
  end
end
return out
