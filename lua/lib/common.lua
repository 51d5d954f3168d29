-- Shared helpers, inlined by the loader where a script says `--@include common`.
-- Validation helpers return nil on bad input so that a script can reject everything
-- before its first write (Redis has no rollback).

-- Integers are bounded to what a double holds exactly (2^53 - 1): beyond it (or inf/nan)
-- a number reaches Redis as '1e+30' / 'inf' and PEXPIRE fails after earlier writes.
local MAX_INT = 9007199254740991
local function is_int(v)
  local n = tonumber(v)
  if n == nil or n ~= n or n ~= math.floor(n) or n > MAX_INT or n < -MAX_INT then return nil end
  return n
end

-- A finite number (no inf/nan), or nil.
local function is_num(v)
  local n = tonumber(v)
  if n == nil or n ~= n or n == math.huge or n == -math.huge then return nil end
  return n
end

local function is_label(v)
  -- lowercase letters, digits, '_', '.', '-'; 1..64 chars; no ':' '{' '}' (key safety)
  return type(v) == 'string' and #v >= 1 and #v <= 64 and string.match(v, '^[a-z0-9][a-z0-9_.-]*$') ~= nil
end

local function is_node_id(v)
  return type(v) == 'string' and #v >= 1 and #v <= 64 and string.match(v, '^[A-Za-z0-9][A-Za-z0-9_.-]*$') ~= nil
end

local function is_lang(v)
  if type(v) ~= 'string' or #v < 2 or #v > 35 then return false end
  local first = true
  for part in string.gmatch(v .. '-', '([^-]*)-') do
    if first then
      if not string.match(part, '^[a-z][a-z][a-z]?$') then return false end
      first = false
    elseif not string.match(part, '^[a-z0-9][a-z0-9]+$') or #part > 8 then
      return false
    end
  end
  return true
end

-- Decode and validate a JSON list of language sets; returns sorted sets or nil.
local function parse_lang_sets(raw)
  local ok, sets = pcall(cjson.decode, raw)
  if not ok or type(sets) ~= 'table' or #sets < 1 or #sets > 16 then return nil end
  local out = {}
  for _, set in ipairs(sets) do
    if type(set) ~= 'table' or #set < 2 or #set > 8 then return nil end
    local langs = {}
    for _, l in ipairs(set) do
      if not is_lang(l) then return nil end
      langs[#langs + 1] = l
    end
    table.sort(langs)
    for i = 2, #langs do if langs[i] == langs[i - 1] then return nil end end
    out[#out + 1] = langs
  end
  return out
end

-- Load score of a node in its pool shards: (running + reserved) / capacity, so a free slot
-- is a score below 1. A node that must not be offered jobs (not connected, not ready) is
-- pushed past UNSCHEDULABLE so selection's score range never reaches it.
local UNSCHEDULABLE = 1000
local function load_score(running, reserved, capacity, connected, status)
  local cap = tonumber(capacity) or 1
  if cap < 1 then cap = 1 end
  local s = ((tonumber(running) or 0) + (tonumber(reserved) or 0)) / cap
  if connected ~= '1' or status ~= 'ready' then s = s + UNSCHEDULABLE end
  return s
end

local function split(s, sep)
  local out = {}
  for part in string.gmatch(s, '([^' .. sep .. ']+)') do out[#out + 1] = part end
  return out
end

-- Remove node_id from one pool shard; a shard left empty is deleted with its index entries.
-- prefix carries the hash tag; shard_id = '<langset>:<region>:<gpu>:<shard>'.
local function leave_shard(prefix, node_id, shard_id)
  local pool_key = prefix .. 'pool:' .. shard_id
  if redis.call('ZREM', pool_key, node_id) == 0 then return 0 end
  local p = split(shard_id, ':')
  local group_key = prefix .. 'poolgroup:' .. p[1] .. ':' .. p[2] .. ':' .. p[3]
  local left = redis.call('HINCRBY', group_key, p[4], -1)
  if left <= 0 or redis.call('ZCARD', pool_key) == 0 then
    redis.call('DEL', pool_key)
    redis.call('HDEL', group_key, p[4])
    redis.call('SREM', prefix .. 'pools:index', shard_id)
    local langs = split(p[1], '_')
    for _, a in ipairs(langs) do
      for _, b in ipairs(langs) do
        if a ~= b then
          local pair_key = prefix .. 'pair:' .. a .. ':' .. b
          redis.call('SREM', pair_key, shard_id)
        end
      end
    end
  end
  return 1
end

-- Full removal of a node: every pool shard, its pool set, record and indexes.
local function remove_node(prefix, node_id, node_key, node_pools_key, all_key, expiry_key, connected_key)
  local shards = redis.call('SMEMBERS', node_pools_key)
  local removed = 0
  for _, shard_id in ipairs(shards) do
    removed = removed + leave_shard(prefix, node_id, shard_id)
  end
  redis.call('DEL', node_pools_key, node_key)
  redis.call('SREM', all_key, node_id)
  redis.call('ZREM', expiry_key, node_id)
  redis.call('ZREM', connected_key, node_id)
  return removed
end

-- Rewrite a node's load score in every shard it belongs to (after a slot changes hands).
local function refresh_score(prefix, node_id)
  local node_key = prefix .. 'node:' .. node_id
  local h = redis.call('HMGET', node_key, 'running', 'reserved', 'capacity', 'connected', 'status')
  if not h[3] then return end
  local score = load_score(h[1], h[2], h[3], h[4], h[5])
  for _, shard_id in ipairs(redis.call('SMEMBERS', node_key .. ':pools')) do
    redis.call('ZADD', prefix .. 'pool:' .. shard_id, 'XX', score, node_id)
  end
end

-- Does the node's record belong to the registration that granted a job's slot? A node that
-- left (graceful, or its TTL passed) and registered again starts its counters from zero: the
-- jobs of its earlier registration hold no slot in them. node_reg is the node's reg_id when
-- the slot was granted (its registered_at for a record written before reg_id existed; '' for
-- a job reserved before either was recorded).
local function registration_of(reg_id, registered_at)
  return reg_id or registered_at or ''
end

local function same_registration(node_key, node_reg)
  local h = redis.call('HMGET', node_key, 'reg_id', 'registered_at')
  if not h[2] then return false end
  return not node_reg or node_reg == '' or registration_of(h[1], h[2]) == node_reg
end

-- Give back the slot a job holds on its node: reserved (assigned) or running (acked).
local function release_slot(prefix, job_id, node_id, state, node_reg)
  if not node_id or node_id == '' then return end
  local node_key = prefix .. 'node:' .. node_id
  redis.call('SREM', node_key .. ':jobs', job_id)
  if not same_registration(node_key, node_reg) then return end
  local field = (state == 'acked') and 'running' or 'reserved'
  if tonumber(redis.call('HGET', node_key, field) or '0') > 0 then
    redis.call('HINCRBY', node_key, field, -1)
  end
  refresh_score(prefix, node_id)
end

-- Take a session's outcomes (a flat list idx1, payload1, ...) and return those now due to its
-- client (flat list idx, payload, ... in the order they leave) and the set of indices taken. An
-- index answered before is skipped: each index is answered exactly once. The session's
-- `delivery` decides what is due:
--   'arrival'  every outcome at once (lingua's first-come-first-served); `next_deliver` is the
--              lowest index not yet answered and `:sent` the answered indices above it;
--   otherwise  ('ordered') strictly in index order from `next_deliver`: an outcome waits in
--              `:results` behind a hole, and a hole holds later outcomes until `gaps` says.
local function deliver_outcomes(prefix, session_id, items, now, gap_ms, session_ttl_ms)
  local session_key = prefix .. 'session:' .. session_id
  local results_key = session_key .. ':results'
  local h = redis.call('HMGET', session_key, 'next_deliver', 'delivery')
  local next_idx = tonumber(h[1] or '0')
  local out, taken = {}, {}
  if h[2] == 'arrival' then
    local sent_key = session_key .. ':sent'
    for i = 1, #items, 2 do
      local idx = items[i]
      if idx >= next_idx and redis.call('SADD', sent_key, idx) == 1 then
        out[#out + 1] = idx
        out[#out + 1] = items[i + 1]
        taken[idx] = true
      end
    end
    if #out == 0 then return out, taken end  -- all answered before: nothing written
    while redis.call('SREM', sent_key, next_idx) == 1 do next_idx = next_idx + 1 end
    redis.call('HSET', session_key, 'next_deliver', next_idx)
    redis.call('PEXPIRE', session_key, session_ttl_ms)
    if redis.call('EXISTS', sent_key) == 1 then redis.call('PEXPIRE', sent_key, session_ttl_ms) end
    return out, taken
  end
  local any = false
  for i = 1, #items, 2 do
    local idx = items[i]
    if idx >= next_idx and redis.call('HSETNX', results_key, idx, items[i + 1]) == 1 then
      taken[idx] = true
      any = true
    end
  end
  if not any then return out, taken end  -- all answered before: nothing written
  while true do
    local p = redis.call('HGET', results_key, next_idx)
    if not p then break end
    out[#out + 1] = next_idx
    out[#out + 1] = p
    redis.call('HDEL', results_key, next_idx)
    next_idx = next_idx + 1
  end
  redis.call('HSET', session_key, 'next_deliver', next_idx)
  redis.call('PEXPIRE', session_key, session_ttl_ms)
  if redis.call('HLEN', results_key) > 0 then
    redis.call('PEXPIRE', results_key, session_ttl_ms)
    -- a new hole (the run advanced) gets a fresh deadline; an old one keeps its own
    if #out > 0 then
      redis.call('ZADD', prefix .. 'gaps', now + gap_ms, session_id)
    else
      redis.call('ZADD', prefix .. 'gaps', 'NX', now + gap_ms, session_id)
    end
  else
    redis.call('ZREM', prefix .. 'gaps', session_id)
  end
  return out, taken
end
