-- Shared by the outbox scripts: takes job `id` out of the outbox and out of its
-- owner's entries (`owners` maps job id -> owner; `of` is the owner sets' prefix).
local function out_of_outbox(outbox, owners, of, id)
  redis.call('ZREM', outbox, id)
  local owner = redis.call('HGET', owners, id)
  if owner then
    redis.call('SREM', of .. owner, id)
    redis.call('HDEL', owners, id)
  end
end
