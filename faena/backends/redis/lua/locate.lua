-- locate: where a message is in one queue (read only).
--
-- KEYS: the queue's ten keys (see _queue.lua).
-- ARGV: id.
--
-- Returns {dead, live}: dead is 'dead' if a dead letter has the id, else false; live is
-- 'leased', 'scheduled', 'queued' or false. Both can be set: a message sent again with the id
-- of a dead letter lives beside it.
local id = ARGV[1]
local dead = redis.call('HEXISTS', KEYS[DEAD_STATE], id) == 1 and 'dead' or false
local live = false
if redis.call('ZSCORE', KEYS[LEASED], id) then
  live = 'leased'
elseif redis.call('ZSCORE', KEYS[SCHEDULED], id) then
  live = 'scheduled'
elseif redis.call('ZSCORE', KEYS[READY], id) then
  live = 'queued'
end
return {dead, live}
