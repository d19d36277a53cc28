-- requeue_dead: put dead letters of one queue back in line, oldest death first.
--
-- KEYS: the queue's ten keys (see _queue.lua).
-- ARGV: now ('' for the server's TIME), then 'all', or 'ids' followed by the ids.
--
-- A requeued letter is ready at the back of the line with its body, priority, fence and
-- enqueue time, and its deliveries counted afresh. A letter whose id is in use again (sent
-- anew, maybe running) stays: putting it back would overwrite the newer message.
-- Returns how many were requeued.
local now = now_ms(ARGV[1])
check_types(0) -- before the first write: a queue Redis refuses is left as it was
local chosen = {}
if ARGV[2] == 'all' then
  chosen = redis.call('ZRANGE', KEYS[DEAD], 0, -1)
else
  local found = {}
  for i = 3, #ARGV do
    local at = redis.call('ZSCORE', KEYS[DEAD], ARGV[i])
    if at then
      found[#found + 1] = {tonumber(at), ARGV[i]}
    end
  end
  table.sort(found, function(x, y)
    return x[1] < y[1] or (x[1] == y[1] and x[2] < y[2])
  end)
  for _, pair in ipairs(found) do
    chosen[#chosen + 1] = pair[2]
  end
end
local moved = 0
for _, id in ipairs(chosen) do
  if redis.call('HEXISTS', KEYS[STATE], id) == 0 and redis.call('ZSCORE', KEYS[DEAD], id) then
    local fence, _, priority, enqueued = parse_dead(redis.call('HGET', KEYS[DEAD_STATE], id))
    local seq = redis.call('INCR', KEYS[SEQ])
    local state = format_state('W', fence, 0, priority, seq, enqueued, '')
    redis.call('HSET', KEYS[STATE], id, state)
    redis.call('HSET', KEYS[BODY], id, redis.call('HGET', KEYS[DEAD_BODY], id) or '')
    redis.call('ZADD', KEYS[READY], ready_score(priority, seq), id)
    redis.call('ZREM', KEYS[DEAD], id)
    redis.call('HDEL', KEYS[DEAD_STATE], id)
    redis.call('HDEL', KEYS[DEAD_BODY], id)
    moved = moved + 1
  end
end
if moved > 0 then
  wake(0)
end
return moved
