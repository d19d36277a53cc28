-- workers: register a worker's heartbeat, or list the live ones.
--
-- KEYS: the workers hash, `<prefix>:workers` (id -> "heartbeat_ms|alive_ms|info as JSON").
-- ARGV: now ('' for the server's TIME), then
--         'beat' id alive_ms info   record (or refresh) a worker, alive for alive_ms after this
--                                   beat (its app's lease; 0: the reader's); returns now
--         'list' lease_ms           the workers whose heartbeat is within their own alive_ms
--                                   (else lease_ms), as id, heartbeat_ms, info triples; the
--                                   others are deleted
local now = now_ms(ARGV[1])
if ARGV[2] == 'beat' then
  redis.call('HSET', KEYS[1], ARGV[3], string.format('%d|%d|', now, tonumber(ARGV[4])) .. ARGV[5])
  return now
end
local lease = tonumber(ARGV[3])
local entries = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #entries, 2 do
  local beat, alive, info = string.match(entries[i + 1], '^(%-?%d+)|(%d+)|(.*)$')
  if not beat then -- written before the alive time was kept
    beat, info = string.match(entries[i + 1], '^(%-?%d+)|(.*)$')
  end
  beat = tonumber(beat)
  alive = tonumber(alive) or 0
  if alive == 0 then
    alive = lease
  end
  if beat and beat + alive >= now then
    out[#out + 1] = entries[i]
    out[#out + 1] = beat
    out[#out + 1] = info
  else
    redis.call('HDEL', KEYS[1], entries[i])
  end
end
return out
