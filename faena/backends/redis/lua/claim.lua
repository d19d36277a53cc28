-- claim: lease up to `limit` messages from one or more queues, in the order given.
--
-- KEYS: ten keys per queue (see _queue.lua), queue after queue. All queues in one call only
--       where Redis allows it (not a cluster); a cluster client calls once per queue.
-- ARGV: now ('' for the server's TIME), limit, lease in ms, max_deliveries, records prefix.
--
-- For each queue, in order: promote scheduled messages that are due (keeping their place in
-- line), recover expired leases (to the back of the line, counted, last reason
-- `lease_expired`), then pop ready messages, best first, until the batch is full. A popped
-- message that was already handed out max_deliveries times is dead-lettered instead, with the
-- reason of its last loss. A lease increments deliveries and the fence.
--
-- Returns {now, next_due, errors, records, then four per message: id, queue index (0-based),
-- state (as in _queue.lua, after the lease), body}. next_due is -1 if the batch is full; else
-- every queue was emptied, and it is the earliest due time or lease expiry of these queues (-1
-- if none), so the caller knows how long it may sleep.
--
-- records: empty unless a records prefix is given (the result store's, when it lives on this
-- server and not on a cluster); then, per message in order, the value under the job's record
-- key `<prefix>:{<id>}:r` (the same name the result store gives it, escaped alike), nil for
-- none, or 0 if Redis refused the read. These keys are not among KEYS: they are read only,
-- after every write, with errors caught, so a refusal costs the worker its own look-up.
--
-- A queue with another program's value under one of its keys costs only itself: each queue's
-- key types are checked before anything of it is written, and a queue that fails the check
-- (or whose work fails anyway) has its error in `errors` (queue index, then the message, for
-- each such queue); the other queues are served. A script that failed part-way would keep
-- what it had written, and the caller would hear only the error: the leases already taken
-- from earlier queues would be held by nobody, claim after claim.
local now = now_ms(ARGV[1])
local limit = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local max_deliveries = tonumber(ARGV[4])
local records_prefix = ARGV[5] or ''
local out = {now, -1, {}, {}}
local got = 0
local broken = {}

local function promote(b)
  local due = redis.call('ZRANGEBYSCORE', KEYS[b + SCHEDULED], '-inf', now, 'LIMIT', 0, MOVE_BATCH)
  if #due == 0 then
    return
  end
  bulk('ZREM', KEYS[b + SCHEDULED], due)
  local raws = bulk_get('HMGET', KEYS[b + STATE], due)
  local ready = {}
  for k, id in ipairs(due) do
    local where, _, _, priority, seq = parse_state(raws[k] or nil)
    if where then
      ready[#ready + 1] = ready_score(priority, seq)
      ready[#ready + 1] = id
    else
      bury_unreadable(b, id, raws[k] or nil, now)
    end
  end
  bulk('ZADD', KEYS[b + READY], ready)
end

local function recover(b)
  local expired = redis.call('ZRANGEBYSCORE', KEYS[b + LEASED], '-inf', now, 'LIMIT', 0, MOVE_BATCH)
  if #expired == 0 then
    return
  end
  bulk('ZREM', KEYS[b + LEASED], expired)
  local raws = bulk_get('HMGET', KEYS[b + STATE], expired)
  local seq = redis.call('INCRBY', KEYS[b + SEQ], #expired) - #expired
  local states, ready = {}, {}
  for k, id in ipairs(expired) do
    local where, fence, deliveries, priority, _, enqueued = parse_state(raws[k] or nil)
    if where then
      seq = seq + 1
      states[#states + 1] = id
      states[#states + 1] =
        format_state('W', fence, deliveries, priority, seq, enqueued, 'lease_expired')
      ready[#ready + 1] = ready_score(priority, seq)
      ready[#ready + 1] = id
    else
      bury_unreadable(b, id, raws[k] or nil, now)
    end
  end
  bulk('HSET', KEYS[b + STATE], states)
  bulk('ZADD', KEYS[b + READY], ready)
end

-- Lease the popped ids: a handful of calls for the whole batch.
local function lease_all(b, q, ids)
  local raws = bulk_get('HMGET', KEYS[b + STATE], ids)
  local states, leases, kept, slots = {}, {}, {}, {}
  local expiry = now + lease
  for k, id in ipairs(ids) do
    local raw = raws[k] or nil
    -- Parsed in full before anything is decided: a state only partly readable is dead-lettered
    -- as unreadable (which cannot fail), never half-handled after its id left the ready set.
    local where, fence, deliveries, priority, seq, enqueued, reason = parse_state(raw)
    if where ~= 'W' then
      bury_unreadable(b, id, raw, now)
    elseif deliveries >= max_deliveries then
      bury(b, id, fence, deliveries, priority, enqueued,
        reason ~= '' and reason or 'max_deliveries',
        'handed out ' .. deliveries .. ' times without being settled', now)
    elseif fence + 1 >= MAX_FENCE then
      bury(b, id, fence, deliveries, priority, enqueued, 'fences_exhausted',
        'its next hand-out would pass the fences Redis scripts can count exactly', now)
    else
      local state = format_state('L', fence + 1, deliveries + 1, priority, seq, enqueued, reason)
      local n = #states
      states[n + 1] = id
      states[n + 2] = state
      leases[n + 1] = expiry
      leases[n + 2] = id
      kept[#kept + 1] = id
      local m = #out
      out[m + 1] = id
      out[m + 2] = q
      out[m + 3] = state
      out[m + 4] = false
      slots[#slots + 1] = m + 4
      got = got + 1
    end
  end
  if #kept == 0 then
    return
  end
  bulk('HSET', KEYS[b + STATE], states)
  bulk('ZADD', KEYS[b + LEASED], leases)
  local bodies = bulk_get('HMGET', KEYS[b + BODY], kept)
  for k = 1, #kept do
    out[slots[k]] = bodies[k]
  end
end

local function serve(q)
  local b = q * QUEUE_KEYS
  check_types(b)
  promote(b)
  recover(b)
  while got < limit do
    local popped = redis.call('ZPOPMIN', KEYS[b + READY], limit - got)
    if #popped == 0 then
      break
    end
    local ids = {}
    for i = 1, #popped, 2 do
      ids[#ids + 1] = popped[i]
    end
    lease_all(b, q, ids)
  end
  -- Messages left behind: pass the token on to another idle consumer.
  if redis.call('ZCARD', KEYS[b + READY]) > 0 then
    wake(b)
  end
end

-- Errors of a server that cannot take writes now (a replica, loading, busy): an outage of the
-- whole server, not of one queue, so the script fails as a whole. (Out of memory cannot cut a
-- claim short: each queue's first write is a removal, which Redis always allows, and a script
-- that has written may write on past maxmemory; so a full server can still be drained.)
local OUTAGES = {'OOM', 'READONLY', 'LOADING', 'MASTERDOWN', 'BUSY', 'MISCONF', 'NOREPLICAS'}

local function refused(q, err)
  local message = type(err) == 'table' and tostring(err.err) or tostring(err)
  for _, prefix in ipairs(OUTAGES) do
    if string.find(message, prefix, 1, true) == 1 or string.find(message, ': ' .. prefix, 1, true) then
      error(err)
    end
  end
  broken[q] = true
  local errors = out[3]
  errors[#errors + 1] = q
  errors[#errors + 1] = message
end

local queues = #KEYS / QUEUE_KEYS
for q = 0, queues - 1 do
  local mark, got_before = #out, got
  local ok, err = pcall(serve, q)
  if not ok then
    for i = #out, mark + 1, -1 do
      out[i] = nil
    end
    got = got_before
    refused(q, err)
  end
end

if got < limit then
  local next_due = nil
  for q = 0, queues - 1 do
    for _, which in ipairs({SCHEDULED, LEASED}) do
      if not broken[q] then
        local ok, head = pcall(redis.call, 'ZRANGE', KEYS[q * QUEUE_KEYS + which], 0, 0, 'WITHSCORES')
        local at = ok and tonumber(head[2])
        if not ok then
          refused(q, head)
        elseif at and (not next_due or at < next_due) then
          next_due = at
        end
      end
    end
  end
  out[2] = next_due or -1
end

-- The result store's key of job `id`: faena.backends.redis._client.Target.key(id, 'r').
local function record_key(id)
  if id ~= '' and string.sub(id, 1, 1) ~= '}' then
    return records_prefix .. ':{' .. id .. '}:r'
  end
  local escaped = string.gsub(string.gsub(id, '%%', '%%25'), '}', '%%7D')
  if escaped == '' then
    escaped = '%'
  end
  return records_prefix .. ':~{' .. escaped .. '}:r'
end

if records_prefix ~= '' then
  local records = out[4]
  for j = 5, #out, 4 do
    local ok, value = pcall(redis.call, 'GET', record_key(out[j]))
    if not ok then
      value = 0
    end
    -- false for no such key, kept as false (a nil reply): never nil, whose hole would end
    -- the array early and shift every later record.
    records[#records + 1] = value
  end
end
return out
