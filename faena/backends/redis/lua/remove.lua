-- remove: delete a message of one queue that is waiting (ready or scheduled), not leased.
--
-- KEYS: the queue's ten keys (see _queue.lua).
-- ARGV: id.
--
-- Returns the removed message's body ('' if it had none), or false if nothing was removed.
local id = ARGV[1]
check_types(0, {READY, SCHEDULED, STATE, BODY}) -- before the first write
if redis.call('ZREM', KEYS[READY], id) + redis.call('ZREM', KEYS[SCHEDULED], id) == 0 then
  return false
end
local body = redis.call('HGET', KEYS[BODY], id) or ''
redis.call('HDEL', KEYS[STATE], id)
redis.call('HDEL', KEYS[BODY], id)
return body
