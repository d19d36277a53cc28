-- extend: renew leases of one queue that are still ours.
--
-- KEYS: the queue's ten keys (see _queue.lua).
-- ARGV: now ('' for the server's TIME), lease in ms, then id, fence per delivery.
--
-- Returns the ids whose lease was lost: the message is gone, no longer leased, or leased
-- again under a newer fence.
local now = now_ms(ARGV[1])
local expiry = now + tonumber(ARGV[2])
local ids = {}
for i = 3, #ARGV, 2 do
  ids[#ids + 1] = ARGV[i]
end
local raws = bulk_get('HMGET', KEYS[STATE], ids)
local kept, lost = {}, {}
for k, id in ipairs(ids) do
  local fence = string.match(raws[k] or '', '^L(%d+)|')
  if fence and tonumber(fence) == tonumber(ARGV[2 * k + 2]) then
    kept[#kept + 1] = expiry
    kept[#kept + 1] = id
  else
    lost[#lost + 1] = id
  end
end
if #kept > 0 then
  -- A removal first: Redis lets a script that has written go on past maxmemory, so a full
  -- server still renews leases (a refused renewal would hand a live worker's job out again).
  redis.call('ZREM', KEYS[LEASED], kept[2])
  bulk('ZADD', KEYS[LEASED], kept)
end
return lost
