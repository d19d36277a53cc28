-- settle: end leases of one queue, in the order given; each only if it is still ours.
--
-- KEYS: the queue's ten keys (see _queue.lua).
-- ARGV: now ('' for the server's TIME), then the settlements as one string (one argument
--       instead of several per settlement keeps large batches cheap on both sides). Each is
--       an action letter, the fence, then length-prefixed fields ("<bytes>,<field>"):
--         a<fence>,id                       ack: delete the message
--         r<fence>,id                       release, uncounted: ready again at its old place
--         R<fence>,id reason                release, counted ('' keeps the last reason)
--         p<fence>,id due                   release, uncounted, due later (ms)
--         P<fence>,id reason due            release, counted, due later
--         t<fence>,id due                   retry with the same body; due in ms, '' for now
--         T<fence>,id due body              retry with a new body
--         d<fence>,id reason detail         dead-letter
--       e.g. "a7,2,m1" + "R3,2,m25,crash".
--
-- A settlement applies only while the message is leased with the same fence; a retry or
-- release puts it back, so a later settlement of the same delivery in the batch is refused.
-- A retry starts counting deliveries afresh and goes to the back of the line; a release keeps
-- the count (less this delivery when uncounted) and the last reason, and its place in line,
-- unless it is due later (a postponed job): it had its turn, so it goes to the back of the line.
-- Returns one 1 (applied), 0 (the lease was no longer ours) or 2 (the message was ours but its
-- state unreadable: dead-lettered instead, as corrupt_state) per settlement.
local EXTRA = {a = 0, r = 0, R = 1, p = 1, P = 2, t = 1, T = 2, d = 2}
local now = now_ms(ARGV[1])
local blob = ARGV[2]
local pos = 1

local function field()
  local size, start = string.match(blob, '^(%d+),()', pos)
  if not size then
    error('faena settle: malformed settlements at byte ' .. pos)
  end
  pos = start + size
  return string.sub(blob, start, pos - 1)
end

local records, ids = {}, {}
while pos <= #blob do
  local action, fence, rest = string.match(blob, '^(%a)(%d+),()', pos)
  local extra = EXTRA[action]
  if not extra then
    error('faena settle: unknown settlement at byte ' .. pos)
  end
  pos = rest
  local record = {action, field(), tonumber(fence)}
  for _ = 1, extra do
    record[#record + 1] = field()
  end
  records[#records + 1] = record
  ids[#ids + 1] = record[2]
end
if #records == 0 then
  return {}
end

check_types(0) -- before the first write: a queue Redis refuses is left as it was
local raws = bulk_get('HMGET', KEYS[STATE], ids)
local changed = {} -- id -> its state after an earlier settlement of this batch (false: gone)
local acked = {}
local done = {}
local news = false
for k, record in ipairs(records) do
  local action, id, fence = record[1], record[2], record[3]
  local raw = raws[k]
  if changed[id] ~= nil then
    raw = changed[id]
  end
  local applied = 0
  if raw and tonumber(string.match(raw, '^L(%d+)|')) == fence then
    applied = 1
    if action == 'a' then
      acked[#acked + 1] = id
      changed[id] = false
    else
      local _, f, deliveries, priority, seq, enqueued, reason = parse_state(raw)
      redis.call('ZREM', KEYS[LEASED], id)
      if not f then
        -- Its state entry is ours by its fence but unreadable past it (another program's
        -- write): dead-lettered with what is known, as a claim does, never left in no line.
        bury_unreadable(0, id, raw, now)
        changed[id] = false
        applied = 2
      elseif action == 'd' then
        bury(0, id, f, deliveries, priority, enqueued, record[4], record[5], now)
        changed[id] = false
      elseif action == 'r' or action == 'R' or action == 'p' or action == 'P' then
        local due = nil
        if action == 'r' or action == 'p' then
          deliveries = deliveries - 1
          due = record[4]
        else
          if record[4] ~= '' then
            reason = record[4]
          end
          due = record[5]
        end
        if due then
          seq = redis.call('INCR', KEYS[SEQ])
        end
        local state = format_state('W', f, deliveries, priority, seq, enqueued, reason)
        redis.call('HSET', KEYS[STATE], id, state)
        if due and tonumber(due) > now then
          redis.call('ZADD', KEYS[SCHEDULED], due, id)
        else
          redis.call('ZADD', KEYS[READY], ready_score(priority, seq), id)
        end
        changed[id] = state
        news = true
      else
        if action == 'T' then
          redis.call('HSET', KEYS[BODY], id, record[5])
        end
        seq = redis.call('INCR', KEYS[SEQ])
        local state = format_state('W', f, 0, priority, seq, enqueued, '')
        redis.call('HSET', KEYS[STATE], id, state)
        local due = record[4]
        if due ~= '' and tonumber(due) > now then
          redis.call('ZADD', KEYS[SCHEDULED], due, id)
        else
          redis.call('ZADD', KEYS[READY], ready_score(priority, seq), id)
        end
        changed[id] = state
        news = true
      end
    end
  end
  done[k] = applied
end
bulk('ZREM', KEYS[LEASED], acked)
bulk('HDEL', KEYS[STATE], acked)
bulk('HDEL', KEYS[BODY], acked)
if news then
  wake(0)
end
return done
