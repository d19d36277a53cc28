-- Helpers of the broker's scripts, prepended after _common.lua (see broker's _scripts.py).
--
-- A queue's keys come to a script as ten consecutive KEYS; `b` is the offset of the queue's
-- group (0 for the first queue, 10 for the second, ...). Every key of queue q is
-- `<prefix>:{q}:<name>`, so the group lives in one cluster slot:
--
--   b+1  ready       zset  id -> (9 - priority) * 2^49 + seq: lowest first is higher priority,
--                          then older
--   b+2  scheduled   zset  id -> due time (ms)
--   b+3  leased      zset  id -> lease expiry (ms)
--   b+4  state       hash  id -> "<W|L>fence|deliveries|priority|seq|enqueued_ms|last_reason"
--                          (W waiting: ready or scheduled; L leased)
--   b+5  body        hash  id -> body
--   b+6  dead        zset  id -> dead_at (ms)
--   b+7  dead:state  hash  id -> "fence|deliveries|priority|enqueued_ms|#reason|reason..detail"
--   b+8  dead:body   hash  id -> body
--   b+9  seq         string: the queue's order counter; only grows
--   b+10 wake        list: at most one token, pushed when there is news for idle consumers,
--                    who wait for it with BLPOP
--
-- A live message has one state entry and one body, and its id is in exactly one of ready,
-- scheduled or leased (L in its state when leased, W otherwise). A dead letter has its own
-- three entries, so a message sent anew with the id of a dead letter lives beside it.
--
-- Work on many messages goes through few calls (HMGET, multi-field HSET, multi-member ZADD):
-- a call costs more than the Lua around it.

local READY, SCHEDULED, LEASED, STATE, BODY = 1, 2, 3, 4, 5
local DEAD, DEAD_STATE, DEAD_BODY, SEQ, WAKE = 6, 7, 8, 9, 10
local QUEUE_KEYS = 10
local PRIORITY_STEP = 562949953421312 -- 2^49: room for 2^49 seqs per priority in a double
-- 2^16: a send's first fence is its seq times this (faena.contracts.broker.SEND_FENCE_STEP),
-- and each hand-out adds one. Write them with %d, never `..` (which would print a large one as
-- 1.4e+14).
local SEND_FENCE_STEP = 65536
-- Fences must stay exact in Lua's numbers, below 2^53 (MAX_FENCE). So a send's seq is at most
-- 2^37 - 1: the counter, which also grows by one with every retry, postponement, recovered
-- lease and requeued letter, refuses sends past it; and a message whose next hand-out would
-- reach MAX_FENCE (a send of the last seqs handed out 65,536 times) is dead-lettered instead.
local MAX_SEND_SEQ = 137438953471
local MAX_FENCE = 9007199254740991 -- 2^53 - 1
-- The most scheduled messages promoted, or expired leases recovered, per queue by one claim:
-- a backlog that falls due at once is moved over several claims, never in one long script.
local MOVE_BATCH = 1000

local function ready_score(priority, seq)
  return (9 - priority) * PRIORITY_STEP + seq
end

-- location ('W' or 'L'), fence, deliveries, priority, seq, enqueued_ms, last_reason ('' for
-- none); nil if unreadable.
local function parse_state(raw)
  if not raw then
    return nil
  end
  local where, fence, deliveries, priority, seq, enqueued, reason =
    string.match(raw, '^([WL])(%d+)|(%d+)|(%d+)|(%d+)|(%-?%d+)|(.*)$')
  if not where then
    return nil
  end
  return where, tonumber(fence), tonumber(deliveries), tonumber(priority), tonumber(seq),
    tonumber(enqueued), reason
end

local function format_state(where, fence, deliveries, priority, seq, enqueued, reason)
  return string.format('%s%d|%d|%d|%d|%d|', where, fence, deliveries, priority, seq, enqueued)
    .. reason
end

-- unpack() of more values than this would overflow Lua's C stack (8000); even, for pairs.
local CHUNK = 4000

-- `command key v1 v2 ...` over the flat list `values`, in calls of at most CHUNK values.
local function bulk(command, key, values)
  for first = 1, #values, CHUNK do
    redis.call(command, key, unpack(values, first, math.min(first + CHUNK - 1, #values)))
  end
end

-- The replies of `command key f1 f2 ...` (HMGET) for every field, in order.
local function bulk_get(command, key, fields)
  local replies = {}
  for first = 1, #fields, CHUNK do
    local part =
      redis.call(command, key, unpack(fields, first, math.min(first + CHUNK - 1, #fields)))
    for i = 1, #part do
      replies[#replies + 1] = part[i]
    end
  end
  return replies
end

-- fence, deliveries, priority, enqueued_ms, reason, detail of a dead letter.
local function parse_dead(raw)
  local fence, deliveries, priority, enqueued, size, rest =
    string.match(raw or '', '^(%d+)|(%d+)|(%d+)|(%-?%d+)|(%d+)|(.*)$')
  if not fence then
    return 0, 0, 0, 0, 'corrupt_state', 'unreadable dead letter: ' .. tostring(raw)
  end
  size = tonumber(size)
  return tonumber(fence), tonumber(deliveries), tonumber(priority), tonumber(enqueued),
    string.sub(rest, 1, size), string.sub(rest, size + 1)
end

-- Tell one idle consumer of the queue that there is news (it passes the token on if more is
-- left after its claim).
local function wake(b)
  if redis.call('LLEN', KEYS[b + WAKE]) == 0 then
    redis.call('LPUSH', KEYS[b + WAKE], '1')
  end
end

-- The type each of a queue's keys must have (or none, when absent).
local TYPES = {
  [READY] = 'zset', [SCHEDULED] = 'zset', [LEASED] = 'zset', [STATE] = 'hash', [BODY] = 'hash',
  [DEAD] = 'zset', [DEAD_STATE] = 'hash', [DEAD_BODY] = 'hash', [SEQ] = 'string', [WAKE] = 'list',
}
local ALL_KEYS = {READY, SCHEDULED, LEASED, STATE, BODY, DEAD, DEAD_STATE, DEAD_BODY, SEQ, WAKE}

-- Refuse a queue one of whose keys (every key, or those listed in `which`) holds another
-- program's value, before the script writes anything. Redis keeps what a failed script wrote
-- before its error: a script that met the wrong type part way could leave a message half
-- moved (its state deleted and no dead letter written, or waiting in no line), or delete the
-- other program's value. A script checks the keys it writes before it reads or writes in one
-- that fails on its own first.
--
-- The counter must be a number the scripts can go on from: '0' or a positive integer without
-- leading zeros ('007' and '-0' are refused by INCR; a negative seq would make state entries
-- unreadable) below 2^49, so that places in line (ready_score) stay exact in Lua's numbers.
local MAX_SEQ = 562949953421311 -- 2^49 - 1

local function is_counter(text)
  return text == '0'
    or (#text <= 15 and string.match(text, '^[1-9]%d*$') ~= nil and tonumber(text) <= MAX_SEQ)
end

-- Returns the counter's value (0 when absent) when the counter was among the keys checked.
local function check_types(b, which)
  local seq = nil
  for _, k in ipairs(which or ALL_KEYS) do
    local key = KEYS[b + k]
    local found = redis.call('TYPE', key)['ok']
    if found ~= TYPES[k] and found ~= 'none' then
      error({err = 'WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a ' .. TYPES[k]})
    end
    if k == SEQ then
      local text = found == 'string' and redis.call('GET', key) or '0'
      if not is_counter(text) then
        error({err = 'ERR ' .. key .. ' holds a string that is not a counter'})
      end
      seq = tonumber(text)
    end
  end
  return seq
end

-- Move a live message, already taken out of ready, scheduled and leased, to the dead letters.
local function bury(b, id, fence, deliveries, priority, enqueued, reason, detail, now)
  local body = redis.call('HGET', KEYS[b + BODY], id) or ''
  redis.call('HDEL', KEYS[b + STATE], id)
  redis.call('HDEL', KEYS[b + BODY], id)
  redis.call('ZADD', KEYS[b + DEAD], now, id)
  redis.call('HSET', KEYS[b + DEAD_STATE], id,
    string.format('%d|%d|%d|%d|%d|', fence, deliveries, priority, enqueued, #reason)
      .. reason .. detail)
  redis.call('HSET', KEYS[b + DEAD_BODY], id, body)
end

-- A message whose state entry is missing or unreadable (written by something other than
-- faena, or evicted): dead-lettered with what is known, never silently dropped.
local function bury_unreadable(b, id, raw, now)
  local detail = 'its state entry is ' .. (raw and ('unreadable: ' .. raw) or 'missing')
  bury(b, id, 0, 0, 0, now, 'corrupt_state', detail, now)
end
