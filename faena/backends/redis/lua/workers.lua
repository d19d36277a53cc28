-- workers: register a worker's heartbeat, or list the live ones.
--
-- KEYS: the workers hash, `<prefix>:workers` (id -> "heartbeat_ms|info as JSON").
-- ARGV: now ('' for the server's TIME), then
--         'beat' id info       record (or refresh) a worker; returns now
--         'list' lease_ms      the workers whose heartbeat is within lease_ms, as
--                              id, heartbeat_ms, info triples; older entries are deleted
local now = now_ms(ARGV[1])
if ARGV[2] == 'beat' then
  redis.call('HSET', KEYS[1], ARGV[3], string.format('%d|', now) .. ARGV[4])
  return now
end
local horizon = now - tonumber(ARGV[3])
local entries = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #entries, 2 do
  local beat, info = string.match(entries[i + 1], '^(%-?%d+)|(.*)$')
  beat = tonumber(beat)
  if beat and beat >= horizon then
    out[#out + 1] = entries[i]
    out[#out + 1] = beat
    out[#out + 1] = info
  else
    redis.call('HDEL', KEYS[1], entries[i])
  end
end
return out
