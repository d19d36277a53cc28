-- Delete one job record (and its wake list) if its expiry time has come.
--
-- KEYS[1]  prefix:{job}:r       as in results_store.lua
-- KEYS[2]  prefix:{job}:r:wake
-- ARGV[1]  now in ms, or '' for the server's TIME
-- Returns 1 if deleted, else 0 (live, never expiring, gone, or not a job record).

local head = redis.call('GETRANGE', KEYS[1], 0, 63)
local expires = string.match(head, '^%-?%d+,(%d+)|')
if expires and tonumber(expires) <= now_ms(ARGV[1]) then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
