-- stats: counts of one queue (read only).
--
-- KEYS: the queue's ten keys (see _queue.lua).
-- ARGV: now ('' for the server's TIME).
--
-- Returns {ready, scheduled, leased, dead}. A due scheduled message and an expired lease count
-- as ready, as the next claim will make them.
local now = now_ms(ARGV[1])
local due = redis.call('ZCOUNT', KEYS[SCHEDULED], '-inf', now)
local expired = redis.call('ZCOUNT', KEYS[LEASED], '-inf', now)
return {
  redis.call('ZCARD', KEYS[READY]) + due + expired,
  redis.call('ZCARD', KEYS[SCHEDULED]) - due,
  redis.call('ZCARD', KEYS[LEASED]) - expired,
  redis.call('ZCARD', KEYS[DEAD]),
}
