-- take_in_window: one use of a sliding window, if the window has room.
--
-- KEYS[1]  prefix:{window}:w  a sorted set of uses: a unique member scored by its time in ms
-- ARGV[1]  now in ms, or '' for the server's TIME (see _common.lua)
-- ARGV[2]  the least native expiry in ms on a test clock (whose time is unrelated to Redis's)
-- ARGV[3]  the limit; ARGV[4] the window in ms; ARGV[5] a member unique to this use
--
-- Returns 0 when the use was taken, else the ms until the use whose departure frees a place
-- (the limit-th newest) leaves the window; at least 1.

local key = KEYS[1]
local now = now_ms(ARGV[1])
local test_clock = ARGV[1] ~= ''
local floor_ms, limit, window = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])

redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.0f', now - window))
if redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, string.format('%.0f', now), ARGV[5])
  local keep = window
  if test_clock then
    keep = math.max(window, floor_ms)
  end
  redis.call('PEXPIRE', key, string.format('%.0f', keep))
  return 0
end
local blocking = redis.call('ZREVRANGE', key, limit - 1, limit - 1, 'WITHSCORES')
return math.max(1, math.floor(tonumber(blocking[2]) + window - now))
