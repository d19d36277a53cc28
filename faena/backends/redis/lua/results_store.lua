-- Write one job record unless a live record with a higher fence is stored; wake its waiters.
--
-- KEYS[1]  prefix:{job}:r       string "<fence>,<expires ms or nothing>|<msgpack record>"
-- KEYS[2]  prefix:{job}:r:wake  list: the stored value again, while the record is ready and for
--                               at most WAKE_MS; BLMOVE waiters receive it
-- ARGV[1]  now in ms, or '' for the server's TIME (see now_ms)
-- ARGV[2]  the least native expiry in ms on a test clock (ARGV[1] given)
-- ARGV[3]  the record's fence, decimal
-- ARGV[4]  its expiry time in ms, or '' for never
-- ARGV[5]  '1' if the record is in a ready state (SUCCESS, FAILURE, REVOKED)
-- ARGV[6]  the value to store: the header above, then the encoded record
-- ARGV[7]  '1': not over a live record in a ready state either (a revoke), else '0'
-- Returns 1 if written, 0 if a higher fence (or, with ARGV[7], a ready record) kept the stored
-- record.

-- The longest a wake list lives (and keeps its copy of the value): a waiter needs it only
-- between looking at the record and blocking, and looks again after every blocking slice.
local WAKE_MS = 10000

-- a < b for decimal integers given as text, exactly (fences reach 2^62, past a double's
-- 2^53 of exact integers).
local function int_less(a, b)
  local neg_a, neg_b = a:sub(1, 1) == '-', b:sub(1, 1) == '-'
  if neg_a ~= neg_b then
    return neg_a
  end
  if neg_a then
    a, b = b:sub(2), a:sub(2)
  end
  if #a ~= #b then
    return #a < #b
  end
  return a < b
end

local READY_STATES = {SUCCESS = true, FAILURE = true, REVOKED = true}

-- The state of the record encoded in `value` from byte `at` on (1-based), or nil: a msgpack map
-- whose first two entries are always "id" and "state" (JobRecord's first fields, both required;
-- the encoder keeps field order). Redis's cmsgpack cannot decode the record's binary fields, and
-- only these two strings are needed.
local function str_at(value, at)
  local b = string.byte(value, at)
  if not b then
    return nil
  end
  local len, from
  if b >= 0xa0 and b <= 0xbf then
    len, from = b - 0xa0, at + 1
  elseif b == 0xd9 then
    len, from = string.byte(value, at + 1), at + 2
  elseif b == 0xda then
    local hi, lo = string.byte(value, at + 1, at + 2)
    len, from = hi * 256 + lo, at + 3
  elseif b == 0xdb then
    local b1, b2, b3, b4 = string.byte(value, at + 1, at + 4)
    len, from = ((b1 * 256 + b2) * 256 + b3) * 256 + b4, at + 5
  else
    return nil
  end
  return string.sub(value, from, from + len - 1), from + len
end

local function stored_state(value, at)
  local b = string.byte(value, at)
  if b and b >= 0x80 and b <= 0x8f then
    at = at + 1
  elseif b == 0xde then
    at = at + 3
  else
    return nil
  end
  local key, next_at = str_at(value, at)
  if key ~= 'id' then
    return nil
  end
  local _, after_id = str_at(value, next_at)
  if not after_id then
    return nil
  end
  key, next_at = str_at(value, after_id)
  if key ~= 'state' then
    return nil
  end
  return (str_at(value, next_at))
end

local record, wake = KEYS[1], KEYS[2]
local test_clock = ARGV[1] ~= ''
local fence, expires, ready, value = ARGV[3], ARGV[4], ARGV[5] == '1', ARGV[6]
local now = now_ms(ARGV[1])

local head = redis.call('GETRANGE', record, 0, 63)
if head ~= '' then
  local old_fence, old_expires = string.match(head, '^(%-?%d+),(%d*)|')
  if not old_fence then
    return redis.error_reply('faena: ' .. record .. ' does not hold a job record')
  end
  local live = old_expires == '' or tonumber(old_expires) > now
  if live and int_less(fence, old_fence) then
    return 0
  end
  if live and ARGV[7] == '1' then
    local state = stored_state(redis.call('GET', record), #string.match(head, '^[^|]*|') + 1)
    if not state then
      return redis.error_reply('faena: ' .. record .. ' holds a job record whose state cannot be read')
    end
    if READY_STATES[state] then
      return 0
    end
  end
end

redis.call('SET', record, value)
local wake_at = now + WAKE_MS
if expires ~= '' then
  if test_clock then
    local left_ms = math.max(tonumber(expires) - now, tonumber(ARGV[2]))
    redis.call('PEXPIRE', record, string.format('%.0f', left_ms))
  else
    redis.call('PEXPIREAT', record, expires)
    wake_at = math.min(wake_at, tonumber(expires))
  end
end

-- A wake list holds the current value, so a waiter woken by it needs no second read; it
-- exists only while the record is ready, and never outlives it (on the server's clock), or a
-- waiter would be woken again and again by a record that is gone. On a test clock the record
-- lives far longer than the wake list in real time.
redis.call('DEL', wake)
if ready and (test_clock or wake_at > now) then
  redis.call('RPUSH', wake, value)
  if test_clock then
    redis.call('PEXPIRE', wake, WAKE_MS)
  else
    redis.call('PEXPIREAT', wake, string.format('%.0f', wake_at))
  end
end
return 1
