-- workers: register a worker's heartbeat, or list the live ones.
--
-- KEYS: the workers hash, `<prefix>:workers` (id -> "heartbeat_ms|info as JSON").
-- ARGV: now ('' for the server's TIME), then
--         'beat' id info       record (or refresh) a worker; returns now
--         'list' lease_ms      the workers whose last heartbeat is within their own `alive_s`
--                              (from the info; else lease_ms), as id, heartbeat_ms, info
--                              triples; the others are deleted
local now = now_ms(ARGV[1])
if ARGV[2] == 'beat' then
  -- Removed, then written: a script that has removed something may write past maxmemory, so
  -- a worker starts and beats on a full server (it is what drains it).
  redis.call('HDEL', KEYS[1], ARGV[3])
  redis.call('HSET', KEYS[1], ARGV[3], string.format('%d|', now) .. ARGV[4])
  return now
end
local lease = tonumber(ARGV[3])
local entries = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #entries, 2 do
  local beat, info = string.match(entries[i + 1], '^(%-?%d+)|(.*)$')
  beat = tonumber(beat)
  local alive = lease
  if beat then
    local ok, fields = pcall(cjson.decode, info)
    local own = ok and type(fields) == 'table' and tonumber(fields.alive_s)
    if own and own > 0 then
      alive = own * 1000
    end
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
