-- dead_letters: the newest dead letters of one queue (read only).
--
-- KEYS: the queue's ten keys (see _queue.lua).
-- ARGV: limit.
--
-- Returns six per letter, newest first: id, dead_at in ms, deliveries, reason, detail, body.
local rows = redis.call('ZREVRANGE', KEYS[DEAD], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
local out = {}
for i = 1, #rows, 2 do
  local id = rows[i]
  local _, deliveries, _, _, reason, detail =
    parse_dead(redis.call('HGET', KEYS[DEAD_STATE], id))
  local n = #out
  out[n + 1] = id
  out[n + 2] = tonumber(rows[i + 1])
  out[n + 3] = deliveries
  out[n + 4] = reason
  out[n + 5] = detail
  out[n + 6] = redis.call('HGET', KEYS[DEAD_BODY], id) or ''
end
return out
