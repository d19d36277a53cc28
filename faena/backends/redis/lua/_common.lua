-- Helpers prepended to every faena script (see _client.load_script).
--
-- now_ms(arg): the time in milliseconds: `arg` when the caller runs on a test clock, the
-- server's own TIME when `arg` is empty.
local function now_ms(arg)
  if arg ~= nil and arg ~= '' then
    return tonumber(arg)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
