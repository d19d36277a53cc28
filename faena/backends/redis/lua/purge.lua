-- purge: delete every waiting (ready or scheduled) message of one queue, and every message
-- whose lease has expired (its worker is gone: the next claim would make it ready, and stats
-- counts it as ready); messages leased by a live worker stay.
--
-- KEYS: the queue's ten keys (see _queue.lua).
-- ARGV: now ('' for the server's TIME).
--
-- Returns how many were deleted. Takes time in proportion to the backlog.
local CHUNK = 1000
local now = now_ms(ARGV[1])
check_types(0, {READY, SCHEDULED, LEASED, STATE, BODY}) -- before the first write
local deleted = 0

local function forget(ids)
  for first = 1, #ids, CHUNK do
    local last = math.min(first + CHUNK - 1, #ids)
    redis.call('HDEL', KEYS[STATE], unpack(ids, first, last))
    redis.call('HDEL', KEYS[BODY], unpack(ids, first, last))
  end
  deleted = deleted + #ids
end

for _, which in ipairs({READY, SCHEDULED}) do
  forget(redis.call('ZRANGE', KEYS[which], 0, -1))
  redis.call('DEL', KEYS[which])
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[LEASED], '-inf', now)
forget(expired)
for first = 1, #expired, CHUNK do
  redis.call('ZREM', KEYS[LEASED], unpack(expired, first, math.min(first + CHUNK - 1, #expired)))
end
return deleted
