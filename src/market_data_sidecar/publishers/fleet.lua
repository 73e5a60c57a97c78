-- One atomic step of a fleet member (publishers/fleet.py): write this member's state
-- (or remove it), drop expired members, compute the fleet's composite, and XADD it to
-- the stream only if it differs from the last one published (or when forced: a resync).
-- Lease expiry uses the server's clock, so the pods' clocks do not matter.
--
-- When the fleet's state is unknown (Redis restarted empty, or a first start), a
-- composite less severe than `hard` is held back for one renewal, until every live
-- member has written its state again: a consumer must never see a level less severe
-- than the truth on the way.
--
-- KEYS: members hash, last-published signature, stream, hold
-- ARGV: instance, state ('' = leave), lease ms, token, force ('1'), maxlen, event id,
--       schema id, track, renewal ms
-- A member's entry: '<expires ms>|<renewed ms>|<token>|<state JSON>'.
local members_key, last_key, stream, hold_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local instance, state, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local token, force, maxlen = ARGV[4], ARGV[5] == '1', ARGV[6]
local renewal = tonumber(ARGV[10])

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

-- Whose entry this member found under its name: another process's token means another
-- live sidecar claims the name (or this one restarted: the caller tells them apart).
local found = ''
local mine = redis.call('HGET', members_key, instance)
if mine then
  found = string.match(mine, '^%d+|%d+|([^|]*)|') or '?'
end
if state == '' then
  if found == token then
    redis.call('HDEL', members_key, instance)
  end
else
  redis.call('HSET', members_key, instance,
    string.format('%d|%d|%s|%s', now + lease, now, token, state))
  if redis.call('PTTL', members_key) < 2 * lease then
    redis.call('PEXPIRE', members_key, 2 * lease)
  end
end

-- A member's state as this version writes it, or nil: whatever another version (or a
-- hand) wrote must never reach the stream, where the consumers would dead-letter it.
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

-- Rank as feedback/scope.py does: severity, then utilization, then the name.
local function better(a, b)
  if a.severity ~= b.severity then return a.severity > b.severity end
  if a.utilization ~= b.utilization then return a.utilization > b.utilization end
  return a.instance > b.instance
end

local entries = redis.call('HGETALL', members_key)
local worst, count, coordinators = nil, 0, 0
local next_expiry = -1
local unparsable, view = {}, {}
for i = 1, #entries, 2 do
  local name, value = entries[i], entries[i + 1]
  local expires, renewed, _, body = string.match(value, '^(%d+)|(%d+)|([^|]*)|(.*)$')
  local member = body and readable(body)
  if not member then
    table.insert(unparsable, name)
  elseif tonumber(expires) <= now then
    redis.call('HDEL', members_key, name)
  else
    member.instance = name
    count = count + 1
    coordinators = coordinators + member.coordinators
    if worst == nil or better(member, worst) then worst = member end
    if name ~= instance then
      local left = tonumber(expires) - now
      if next_expiry < 0 or left < next_expiry then next_expiry = left end
    end
    table.insert(view, {name, member.level, member.coordinator,
      tostring(member.coordinators), tostring(now - tonumber(renewed))})
  end
end

local signature = ''
if worst ~= nil then
  signature = table.concat({worst.instance, worst.signature, count, coordinators}, '\n')
end
local last = redis.call('GET', last_key)
if not last then
  -- The hold starts once: from now on the fleet's state is known to be rebuilding.
  redis.call('SET', hold_key, '1', 'PX', renewal)
  redis.call('SET', last_key, '', 'PX', 4 * lease)
  last = ''
end
local hold = redis.call('PTTL', hold_key)
local published, entry = 0, ''
if worst ~= nil and (force or signature ~= last) and hold > 0 and worst.severity < 2 then
  -- Rebuilding: wake the caller when the hold ends, to publish then.
  if next_expiry < 0 or hold < next_expiry then next_expiry = hold end
  signature = last
elseif worst ~= nil and (force or signature ~= last) then
  local headers = worst.headers
  headers['event_id'] = ARGV[7]
  headers['scope'] = 'fleet'
  headers['member'] = worst.instance
  headers['coordinator'] = worst.coordinator
  headers['members'] = tostring(count)
  headers['coordinators'] = tostring(coordinators)
  if force then headers['resync'] = 'true' end
  local meta = cjson.encode({schema_id = ARGV[8], track = ARGV[9], headers = headers,
    hash = worst.hash})
  local envelope = string.format('{"ts":%d.%06d,"key":%s,"meta":%s,"payload":%s}',
    tonumber(time[1]), tonumber(time[2]), cjson.encode(worst.coordinator), meta,
    worst.payload)
  entry = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'data', envelope)
  published = 1
end
if signature ~= last then
  redis.call('SET', last_key, signature, 'PX', 4 * lease)
elseif signature ~= '' then
  redis.call('PEXPIRE', last_key, 4 * lease)
end

local composite = {}
if worst ~= nil then
  composite = {worst.instance, worst.level, worst.coordinator, tostring(count),
    tostring(coordinators), worst.payload}
end
return {published, found, next_expiry, unparsable, view, composite, entry}
