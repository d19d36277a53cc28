-- locate: where a message is in one queue (read only).
--
-- KEYS: the queue's ten keys (see _queue.lua).
-- ARGV: id.
--
-- Returns 'dead', 'leased', 'scheduled', 'queued' or false. A dead letter answers first, as
-- a newer message with its id may also be live.
local id = ARGV[1]
if redis.call('HEXISTS', KEYS[DEAD_STATE], id) == 1 then
  return 'dead'
end
if redis.call('ZSCORE', KEYS[LEASED], id) then
  return 'leased'
end
if redis.call('ZSCORE', KEYS[SCHEDULED], id) then
  return 'scheduled'
end
if redis.call('ZSCORE', KEYS[READY], id) then
  return 'queued'
end
return false
