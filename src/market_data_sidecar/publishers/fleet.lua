-- One atomic step of a fleet member (publishers/fleet.py): write this member's state (or
-- leave), judge the others, compute the fleet's composite and XADD it when it changed (or
-- when forced: a resync). Leases use the server's clock, so the pods' clocks do not matter.
--
-- A member is one process under one instance name: `<instance>#<token>`. Its entry in the
-- members hash is '<seq>|<renewed>|<lease end>|<drop at>|<level>|<coordinators>|<n>|'
-- followed by its worst coordinator (n bytes) and its state JSON. Sorted sets index the
-- members (by lease end, drop time, rank, name), so a step touches what changed and the
-- worst: O(log N). Whatever is in the hash without being indexed was not written by a
-- step: it is counted, never read.
--
-- A member whose lease ended without leaving is suspect until its drop time (the grace):
-- it may be partitioned or paused with a full store, so its last level keeps counting.
-- Writes are fenced: a step whose sequence is not above the stored one changes nothing,
-- and a member that left keeps a tombstone, so a late step cannot bring it back.
--
-- The fleet's record (count, coordinators, last composite, last step time) is checked
-- against the index at every step. When it cannot vouch for the members (Redis emptied,
-- restored from a snapshot, a key evicted or deleted, a gap in steps longer than a
-- renewal, the server's clock gone back), a composite milder than `hard` is held until
-- every member of the last known view (the index's worst and the caller's memory) has
-- written again, or a lease has passed: no reader passes through a level milder than
-- the truth on the way.
--
-- KEYS: members, leases, drops, rank, names, tombstones, record, awaiting, rows, stream
-- ARGV: instance, token, seq, state ('' = leave), lease ms, grace ms, renewal ms,
--       force ('1'), maxlen, event id, schema id, track, inspect ('1'), lease bound ms,
--       grace bound ms, then the ids of the caller's last view
local members, leases, drops, rank = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local names, tombstones, record, awaiting = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
-- rows: each member's short row for the views, so showing 100 members reads 100 short
-- strings, not 100 states.
local rows_key, stream = KEYS[9], KEYS[10]
local instance, token, seq, state = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local lease_bound, grace_bound = tonumber(ARGV[14]), tonumber(ARGV[15])
local lease = math.min(tonumber(ARGV[5]), lease_bound)
local grace = math.min(tonumber(ARGV[6]), grace_bound)
local renewal = tonumber(ARGV[7])
local force, maxlen, inspect = ARGV[8] == '1', ARGV[9], ARGV[13] == '1'
-- Rows returned; ids and coordinators are clipped in them; entries larger are foreign.
local SHOWN, SUSPECTS_SHOWN, MAX_ID, MAX_TEXT, MAX_ENTRY = 100, 20, 300, 256, 65536

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local id = instance .. '#' .. token

local tomb = redis.call('ZSCORE', tombstones, id)
if tomb and tonumber(tomb) > now then
  return {'tombstoned'}
end

local function fields(entry)
  if type(entry) ~= 'string' or #entry > MAX_ENTRY then return nil end
  local s, renewed, lease_end, drop_at, level, coordinators, n, at =
    string.match(entry, '^(%d+)|(%d+)|(%d+)|(%d+)|(%a+)|(%d+)|(%d+)|()')
  if not s then return nil end
  n = tonumber(n)
  return {seq = tonumber(s), renewed = tonumber(renewed), lease_end = tonumber(lease_end),
    drop_at = tonumber(drop_at), level = level, coordinators = tonumber(coordinators),
    coordinator = string.sub(entry, at, at + n - 1), entry = entry, body_at = at + n}
end

-- The state JSON of an entry read by `fields`: cut only when needed (the worst's).
local function body(entry)
  return string.sub(entry.entry, entry.body_at)
end

local unknown = false
local current = redis.call('HGET', members, id)
local mine = current and fields(current)
local index_lost = false
if current and not mine then
  unknown, index_lost = 'an entry of this member that does not parse', true
elseif mine and seq <= mine.seq then
  return {'fenced'}
end

-- The record: what the fleet knew at its last step.
local rec = redis.call('HMGET', record, 'stepped', 'count', 'coordinators', 'last',
  'hold_until', 'hold_view')
local stepped, count, coordinators = tonumber(rec[1]), tonumber(rec[2]), tonumber(rec[3])
local last, hold_until, hold_view = rec[4], tonumber(rec[5]), rec[6] == '1'
if not rec[1] then
  unknown = unknown or 'no record of the fleet (first start, Redis emptied or evicted)'
  index_lost = true
elseif not (stepped and count and coordinators and last and hold_until) then
  unknown, index_lost = 'a record that does not parse', true
elseif redis.call('ZCARD', leases) ~= count or redis.call('ZCARD', drops) ~= count
    or redis.call('ZCARD', rank) ~= count or redis.call('ZCARD', names) ~= count
    or redis.call('HLEN', rows_key) ~= count
    or (count > 0 and redis.call('EXISTS', members) == 0) then
  unknown, index_lost = 'members lost (a key evicted or deleted)', true
elseif now - stepped > renewal * 3 / 2 then
  unknown = string.format('no step for %.1fs', (now - stepped) / 1000)
elseif now < stepped - 1000 then
  unknown = 'the server clock went back'
end

local awaited = {}
if unknown then
  -- Who may be missing: the index's worst members and the caller's last view.
  for _, other in ipairs(redis.call('ZREVRANGE', rank, 0, SHOWN - 1)) do
    table.insert(awaited, other)
  end
  for i = 16, #ARGV do table.insert(awaited, ARGV[i]) end
  if index_lost then
    for _, key in ipairs({members, leases, drops, rank, names, rows_key}) do
      redis.call('UNLINK', key)
    end
    count, coordinators, mine = 0, 0, nil
  end
  last = last or ''
end

local removed = 0
local function remove(other)
  local entry = fields(redis.call('HGET', members, other))
  if redis.call('ZREM', leases, other) == 1 then
    count = count - 1
    if entry then coordinators = coordinators - entry.coordinators end
  end
  redis.call('HDEL', members, other)
  redis.call('HDEL', rows_key, other)
  redis.call('ZREM', drops, other)
  redis.call('ZREM', rank, other)
  redis.call('ZREM', names, other)
  redis.call('SREM', awaiting, other)
  removed = removed + 1
end

redis.call('ZREMRANGEBYSCORE', tombstones, '-inf', now)
-- Index entries no step could have written (a lease beyond the bound) pin nothing.
local foreign = 0
for _, other in ipairs(redis.call('ZRANGEBYSCORE', leases, '(' .. (now + lease_bound), '+inf',
    'LIMIT', 0, SHOWN)) do
  remove(other)
  foreign = foreign + 1
end
for _, other in ipairs(redis.call('ZRANGEBYSCORE', drops,
    '(' .. (now + lease_bound + grace_bound), '+inf', 'LIMIT', 0, SHOWN)) do
  remove(other)
  foreign = foreign + 1
end

-- Members past their grace are dropped.
local dropped = {}
local dropped_count = 0
for _, other in ipairs(redis.call('ZRANGEBYSCORE', drops, '-inf', now)) do
  if other ~= id then
    remove(other)
    dropped_count = dropped_count + 1
    if #dropped < SHOWN then table.insert(dropped, string.sub(other, 1, MAX_ID)) end
  end
end

-- A member's state as this version writes it, or nil.
local function readable(body)
  local ok, member = pcall(cjson.decode, body)
  if not ok or type(member) ~= 'table' or type(member.severity) ~= 'number'
      or type(member.utilization) ~= 'number' or type(member.level) ~= 'string'
      or type(member.coordinator) ~= 'string' or type(member.coordinators) ~= 'number'
      or type(member.payload) ~= 'string' or type(member.hash) ~= 'string'
      or type(member.signature) ~= 'string' or type(member.headers) ~= 'table' then
    return nil
  end
  local parsed, event = pcall(cjson.decode, member.payload)
  if not parsed or type(event) ~= 'table' or event.level ~= member.level then
    return nil
  end
  local headers = {}
  for _, key in ipairs({'utilization', 'reason', 'origin'}) do
    if type(member.headers[key]) == 'string' then headers[key] = member.headers[key] end
  end
  member.headers = headers
  return member
end

local others, replaced = 0, 0
if state == '' then
  if redis.call('ZSCORE', leases, id) then remove(id) end
  redis.call('ZADD', tombstones, now + lease_bound, id)
  redis.call('PEXPIRE', tombstones, lease_bound)
else
  local member = readable(state)
  if not member then
    return redis.error_reply('ERR fleet: this member\'s state does not parse')
  end
  if redis.call('ZSCORE', leases, id) then
    if mine then coordinators = coordinators - mine.coordinators end
  else
    count = count + 1
    redis.call('ZADD', names, 0, id)
  end
  local coordinator = string.sub(member.coordinator, 1, MAX_TEXT)
  local lease_end, drop_at = now + lease, now + lease + grace
  redis.call('HSET', members, id, string.format('%d|%d|%d|%d|%s|%d|%d|%s%s', seq, now,
    lease_end, drop_at, member.level, member.coordinators, #coordinator, coordinator, state))
  redis.call('HSET', rows_key, id, string.format('%d|%d|%d|%s|%d|%s', now, lease_end, drop_at,
    member.level, member.coordinators, coordinator))
  redis.call('ZADD', leases, lease_end, id)
  redis.call('ZADD', drops, drop_at, id)
  local utilization = math.max(0, math.min(member.utilization, 999))
  redis.call('ZADD', rank, member.severity * 1000000 + math.floor(utilization * 1000), id)
  coordinators = coordinators + member.coordinators
  redis.call('SREM', awaiting, id)
  -- Other processes under this name: one that has not renewed for a renewal and a half
  -- is gone (a container restarted after an OOM kill) and is replaced at once.
  for _, other in ipairs(redis.call('ZRANGEBYLEX', names, '[' .. instance .. '#',
      '(' .. instance .. '$', 'LIMIT', 0, 10)) do
    if other ~= id then
      local entry = fields(redis.call('HGET', members, other))
      if not entry or now - entry.renewed > renewal * 3 / 2 then
        remove(other)
        replaced = replaced + 1
      elseif mine and entry.renewed > mine.renewed then
        others = others + 1 -- it renewed since this one's last step: alive beside it
      end
    end
  end
end

-- The hold: started here when the state is unknown, ended when its members have spoken.
if unknown then
  redis.call('DEL', awaiting)
  local n = 0
  for _, other in ipairs(awaited) do
    if other ~= id and #other <= MAX_ID and not redis.call('ZSCORE', tombstones, other) then
      n = n + redis.call('SADD', awaiting, other)
    end
  end
  hold_view = n > 0
  if hold_view then
    hold_until = now + lease
  elseif index_lost then
    -- Nobody known to wait for, and nobody known at all: every live member writes
    -- within a renewal.
    hold_until = now + renewal
  end
end
local holding = false
if hold_until > 0 then
  if now >= hold_until or (hold_view and redis.call('SCARD', awaiting) == 0) then
    hold_until, hold_view = 0, false
    redis.call('DEL', awaiting)
  else
    holding = true
  end
end

-- The composite: the worst counted member, live or suspect.
local worst, worst_id = nil, nil
for _ = 1, 10 do
  local top = redis.call('ZREVRANGE', rank, 0, 0)
  if #top == 0 then break end
  local entry = fields(redis.call('HGET', members, top[1]))
  worst = entry and readable(body(entry))
  if worst then
    worst_id = top[1]
    break
  end
  remove(top[1]) -- overwritten by hand: it no longer says anything a step wrote
  foreign = foreign + 1
end

local signature = ''
local worst_instance = ''
if worst then
  worst_instance = string.match(worst_id, '^(.*)#') or worst_id
  signature = table.concat({worst_id, worst.signature, count, coordinators}, '\n')
end
local entry_id = ''
local next_ms = -1
if worst and (force or signature ~= last) then
  if holding and worst.severity < 2 then
    signature = last -- published when the hold ends: the caller wakes then
    next_ms = hold_until - now
  else
    local headers = worst.headers
    headers['event_id'] = ARGV[10]
    headers['scope'] = 'fleet'
    headers['member'] = worst_instance
    headers['coordinator'] = worst.coordinator
    headers['members'] = tostring(count)
    headers['coordinators'] = tostring(coordinators)
    if force then headers['resync'] = 'true' end
    local meta = cjson.encode({schema_id = ARGV[11], track = ARGV[12], headers = headers,
      hash = worst.hash})
    local envelope = string.format('{"ts":%d.%06d,"key":%s,"meta":%s,"payload":%s}',
      tonumber(time[1]), tonumber(time[2]), cjson.encode(worst.coordinator), meta,
      worst.payload)
    entry_id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'data', envelope)
  end
end
redis.call('HSET', record, 'stepped', now, 'count', count, 'coordinators', coordinators,
  'last', signature, 'hold_until', hold_until, 'hold_view', hold_view and '1' or '0')
if count == 0 then
  -- Nobody left to be evicted apart from: a fleet that is gone leaves nothing behind.
  redis.call('PEXPIRE', record, lease_bound + grace_bound)
else
  redis.call('PERSIST', record)
end

-- What the caller shows: the worst members and the suspects, bounded.
local shown = redis.call('ZREVRANGE', rank, 0, SHOWN - 1)
local seen = {}
for _, other in ipairs(shown) do seen[other] = true end
for _, other in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0,
    SUSPECTS_SHOWN)) do
  if not seen[other] then table.insert(shown, other) end
end
local rows = {}
if #shown > 0 then
  local found = redis.call('HMGET', rows_key, unpack(shown))
  for i, other in ipairs(shown) do
    local row = found[i]
    local renewed, lease_end, drop_at, level, coordinators, coordinator
    if type(row) == 'string' and #row <= MAX_ENTRY then
      renewed, lease_end, drop_at, level, coordinators, coordinator =
        string.match(row, '^(%d+)|(%d+)|(%d+)|(%a+)|(%d+)|(.*)$')
    end
    if renewed then
      table.insert(rows, {string.sub(other, 1, MAX_ID), level,
        string.sub(coordinator, 1, MAX_TEXT), coordinators, tostring(now - renewed),
        tostring(lease_end - now), tostring(drop_at - now)})
    end
  end
end
local suspects = redis.call('ZCOUNT', leases, '-inf', now)
local function sooner(key)
  local first = redis.call('ZRANGEBYSCORE', key, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #first == 2 then
    local left = tonumber(first[2]) - now
    if next_ms < 0 or left < next_ms then next_ms = left end
  end
end
sooner(leases)
sooner(drops)
if holding and (next_ms < 0 or hold_until - now < next_ms) then next_ms = hold_until - now end

local unindexed = redis.call('HLEN', members) - count
local samples = {}
if inspect and unindexed > 0 then
  local scan = redis.call('HSCAN', members, '0', 'COUNT', 50)
  for i = 1, #scan[2], 2 do
    local name = scan[2][i]
    if #samples < 5 and not redis.call('ZSCORE', leases, name) then
      table.insert(samples, string.sub(name, 1, 64))
    end
  end
end

local composite = {}
if worst then
  composite = {worst_instance, worst.level, worst.coordinator, tostring(count),
    tostring(coordinators), worst.payload}
end
return {'ok', entry_id, others, next_ms, rows, {count, suspects, coordinators}, composite,
  dropped, dropped_count, unindexed, samples, holding and (hold_until - now) or -1,
  unknown or '', replaced, foreign}
