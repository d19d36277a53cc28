-- purge_dead: delete dead letters of one queue.
--
-- KEYS: the queue's ten keys (see _queue.lua).
-- ARGV: 'all', or 'ids' followed by the ids.
--
-- Returns how many were deleted.
-- Before the first write (and before DEL, which would take another program's value too)
check_types(0, {DEAD, DEAD_STATE, DEAD_BODY})
if ARGV[1] == 'all' then
  local count = redis.call('ZCARD', KEYS[DEAD])
  redis.call('DEL', KEYS[DEAD], KEYS[DEAD_STATE], KEYS[DEAD_BODY])
  return count
end
local deleted = 0
for i = 2, #ARGV do
  if redis.call('ZREM', KEYS[DEAD], ARGV[i]) == 1 then
    redis.call('HDEL', KEYS[DEAD_STATE], ARGV[i])
    redis.call('HDEL', KEYS[DEAD_BODY], ARGV[i])
    deleted = deleted + 1
  end
end
return deleted
