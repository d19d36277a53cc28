-- purge: delete every waiting (ready or scheduled) message of one queue; leased ones stay.
--
-- KEYS: the queue's ten keys (see _queue.lua).
-- ARGV: none.
--
-- Returns how many were deleted. Takes time in proportion to the backlog.
local CHUNK = 1000
local deleted = 0
for _, which in ipairs({READY, SCHEDULED}) do
  local ids = redis.call('ZRANGE', KEYS[which], 0, -1)
  for first = 1, #ids, CHUNK do
    local last = math.min(first + CHUNK - 1, #ids)
    redis.call('HDEL', KEYS[STATE], unpack(ids, first, last))
    redis.call('HDEL', KEYS[BODY], unpack(ids, first, last))
  end
  deleted = deleted + #ids
  redis.call('DEL', KEYS[which])
end
return deleted
