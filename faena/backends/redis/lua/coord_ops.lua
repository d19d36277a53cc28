-- Every operation of the coordination store on one key, chosen by ARGV[1].
--
-- KEYS[1]  prefix:{key}:c      hash: t = 's' (text) | 'n' (counter) | 'm' (set);
--                              v = the text or the counter; x = expiry time in ms (absent:
--                              never)
-- KEYS[2]  prefix:{key}:c:set  the members of a set key (t = 'm'); expires with KEYS[1]
-- ARGV[1]  the operation (below), ARGV[2] now in ms or '' for the server's TIME,
-- ARGV[3]  the least native expiry in ms on a test clock, ARGV[4...] the operation's own.
--
-- A key whose expiry time has come is absent for every operation, whatever Redis's own
-- expiry says: on a test clock that is far later (see native_expire).

local key, members = KEYS[1], KEYS[2]
local op, test_clock, floor_ms = ARGV[1], ARGV[2] ~= '', tonumber(ARGV[3])
local now = now_ms(ARGV[2])

local function int(n)
  return string.format('%.0f', n)
end

-- Redis's expiry frees the memory: at the expiry time itself on the server's clock; on a test
-- clock, whose time is unrelated to the server's, no sooner than floor_ms from now.
local function native_expire(k, x)
  if test_clock then
    redis.call('PEXPIRE', k, int(math.max(x - now, floor_ms)))
  else
    redis.call('PEXPIREAT', k, int(x))
  end
end

-- The type and value of the live key, or nil; an expired one is deleted on the way.
local function live()
  local f = redis.call('HMGET', key, 't', 'v', 'x')
  if not f[1] then
    return nil
  end
  if f[3] and tonumber(f[3]) <= now then
    redis.call('DEL', key, members)
    return nil
  end
  return f[1], f[2]
end

-- Give the key (and its members) a new expiry, ttl_ms from now.
local function expire_in(ttl_ms, kind)
  local x = now + tonumber(ttl_ms)
  -- Removed, then written: a script that has removed something may write past maxmemory, so
  -- a full server still renews a held lock or slot (else it would pass to a second owner).
  redis.call('HDEL', key, 'x')
  redis.call('HSET', key, 'x', int(x))
  native_expire(key, x)
  if kind == 'm' then
    native_expire(members, x)
  end
end

local function set_if_absent(value, ttl_ms)
  if live() then
    return 0
  end
  redis.call('HSET', key, 't', 's', 'v', value)
  expire_in(ttl_ms, 's')
  return 1
end

-- Text and counters compare as text (a counter as its decimal digits); a set matches nothing.
local function owned(expected)
  local kind, value = live()
  return kind and kind ~= 'm' and value == expected, kind
end

local function compare_and_delete(expected)
  if owned(expected) then
    redis.call('DEL', key, members)
    return 1
  end
  return 0
end

local function compare_and_expire(expected, ttl_ms)
  local match, kind = owned(expected)
  if match then
    expire_in(ttl_ms, kind)
    return 1
  end
  return 0
end

-- {'ok', value as text} or {kind} when the key holds text ('s') or a set ('m').
local function incr(amount, ttl_ms)
  local kind = live()
  if not kind then
    redis.call('HSET', key, 't', 'n', 'v', '0')
    if ttl_ms ~= '' then
      expire_in(ttl_ms, 'n')
    end
  elseif kind ~= 'n' then
    return {kind}
  end
  redis.call('HINCRBY', key, 'v', amount)
  -- Read back as text: a Lua number holds integers exactly only up to 2^53.
  return {'ok', redis.call('HGET', key, 'v')}
end

local function expire(ttl_ms)
  local kind = live()
  if not kind then
    return 0
  end
  expire_in(ttl_ms, kind)
  return 1
end

local function delete()
  local kind = live()
  redis.call('DEL', key, members)
  return kind and 1 or 0
end

-- {'ok', 1 if added, size after} or {kind} when the key holds text ('s') or a counter ('n').
local function add_member(member, ttl_ms)
  local kind = live()
  if kind and kind ~= 'm' then
    return {kind}
  end
  local added = redis.call('SADD', members, member)
  if not kind then
    redis.call('HSET', key, 't', 'm')
    expire_in(ttl_ms, 'm')
  end
  return {'ok', added, redis.call('SCARD', members)}
end

-- add_member of each member in ARGV[first...], in order: {'ok', added, size after, added,
-- size after, ...} or {kind} (and nothing added) when the key holds text or a counter.
local function add_members(ttl_ms, first)
  local kind = live()
  if kind and kind ~= 'm' then
    return {kind}
  end
  local out, size = {'ok'}, redis.call('SCARD', members)
  for i = first, #ARGV do
    local added = redis.call('SADD', members, ARGV[i])
    size = size + added
    out[#out + 1] = added
    out[#out + 1] = size
  end
  if not kind then
    redis.call('HSET', key, 't', 'm')
    expire_in(ttl_ms, 'm')
  end
  return out
end

-- Delete the key if its expiry time has come; 1 if deleted.
local function cleanup()
  local x = redis.call('HGET', key, 'x')
  if x and tonumber(x) <= now then
    redis.call('DEL', key, members)
    return 1
  end
  return 0
end

if op == 'set_if_absent' then
  return set_if_absent(ARGV[4], ARGV[5])
elseif op == 'compare_and_delete' then
  return compare_and_delete(ARGV[4])
elseif op == 'compare_and_expire' then
  return compare_and_expire(ARGV[4], ARGV[5])
elseif op == 'incr' then
  return incr(ARGV[4], ARGV[5])
elseif op == 'expire' then
  return expire(ARGV[4])
elseif op == 'delete' then
  return delete()
elseif op == 'add_member' then
  return add_member(ARGV[4], ARGV[5])
elseif op == 'add_members' then
  return add_members(ARGV[4], 5)
elseif op == 'cleanup' then
  return cleanup()
end
return redis.error_reply('faena: unknown coordination operation ' .. tostring(op))
