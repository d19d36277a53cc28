-- enqueue: add messages to one queue, all in one step.
--
-- KEYS: the queue's ten keys (see _queue.lua).
-- ARGV: now ('' for the server's TIME), then four per message: id, body, priority (0-9),
--       due in ms ('' for now).
--
-- A message due now goes to ready, a later one to scheduled. Re-sending an id that is waiting
-- replaces it (new body, new place in line, deliveries counted afresh); one that is leased is
-- running now, so the duplicate is dropped rather than run twice. A send's fences start at its
-- seq times SEND_FENCE_STEP and never go back, so a stale holder of an older lease, of this
-- send or of an earlier one (acknowledged, dead or purged since), never matches again. One
-- wake token tells an idle consumer (also about scheduled messages: it then sleeps until the
-- earliest is due).
local now = now_ms(ARGV[1])
local count = (#ARGV - 1) / 4
local ids = {}
for i = 2, #ARGV, 4 do
  ids[#ids + 1] = ARGV[i]
end
-- Nothing is written in a queue Redis refuses: the state read fails on its own key; the others
-- are checked first.
local counter = check_types(0, {SEQ, BODY, READY, SCHEDULED, WAKE})
local old = bulk_get('HMGET', KEYS[STATE], ids)
if counter + count > MAX_SEND_SEQ then
  error({err = 'ERR ' .. KEYS[SEQ] .. ' would pass ' .. MAX_SEND_SEQ
    .. ', the most entries into its line (sends, retries, postponements, recovered leases, '
    .. 'requeued letters) a queue takes in its life, its fences having to stay exact: send '
    .. 'to a queue of another name'})
end
local seq = redis.call('INCRBY', KEYS[SEQ], count) - count
local states, bodies, ready, scheduled = {}, {}, {}, {}

local function flush()
  bulk('HSET', KEYS[STATE], states)
  bulk('HSET', KEYS[BODY], bodies)
  bulk('ZADD', KEYS[READY], ready)
  bulk('ZADD', KEYS[SCHEDULED], scheduled)
  states, bodies, ready, scheduled = {}, {}, {}, {}
end

local seen = {}
for k, id in ipairs(ids) do
  local i = 4 * k - 2
  local raw = old[k]
  if seen[id] then
    -- The same id earlier in this batch: write what is pending, then replace it.
    flush()
    raw = redis.call('HGET', KEYS[STATE], id)
  end
  seen[id] = true
  local fence = 0
  local leased = false
  if raw then
    local where, f = string.match(raw, '^([WL])(%d+)|')
    leased = where == 'L'
    if not leased then
      fence = tonumber(f) or 0
      redis.call('ZREM', KEYS[READY], id)
      redis.call('ZREM', KEYS[SCHEDULED], id)
    end
  end
  if not leased then
    seq = seq + 1
    fence = math.max(fence, seq * SEND_FENCE_STEP)
    local priority = tonumber(ARGV[i + 2])
    local n = #states
    states[n + 1] = id
    states[n + 2] = format_state('W', fence, 0, priority, seq, now, '')
    bodies[n + 1] = id
    bodies[n + 2] = ARGV[i + 1]
    local due = ARGV[i + 3]
    if due ~= '' and tonumber(due) > now then
      scheduled[#scheduled + 1] = due
      scheduled[#scheduled + 1] = id
    else
      ready[#ready + 1] = ready_score(priority, seq)
      ready[#ready + 1] = id
    end
  end
end
flush()
wake(0)
return count
