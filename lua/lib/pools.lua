-- Pool shards and load scores: membership, the score that selection reads, the pair index,
-- removal. Needs common.

-- A node's score in each of its pool shards says at once whether selection may offer it a
-- job and how loaded it is. load = (running + reserved) / capacity (at most FULL), so a free
-- slot is a load below 1.
--   band 0        load                 connected, ready, public, no service cooling down
--   band b >= 1   BAND * b + load      connected and ready but restricted: private to a
--                                      tenant, or some services cooling down (its class)
--   unschedulable UNSCHEDULABLE + load not connected, or not ready (draining, degraded)
-- A band is one class of restriction: `bands` maps a class ('@<tenant>' for a private node,
-- '' for a public one, then '|' and the services cooling down, sorted) to its band, so the
-- nodes that some job may not take never sit in the range where others are free: selection
-- reads band 0 and only the bands the job's tenant and services allow.
local UNSCHEDULABLE = 1000
local BAND = 2
local FULL = 1.5
local MAX_BAND = 499          -- the overflow band: classes beyond share it (always read)
local NO_FREE = 1000000000    -- the pair index's score for a shard without a free node

local function load_of(running, reserved, capacity)
  local cap = tonumber(capacity) or 1
  if cap < 1 then cap = 1 end
  local load = ((tonumber(running) or 0) + (tonumber(reserved) or 0)) / cap
  if load > FULL then load = FULL end
  return load
end

-- Load score of an unrestricted node (band 0), or of one that must not be offered jobs.
local function load_score(running, reserved, capacity, connected, status)
  local s = load_of(running, reserved, capacity)
  if connected ~= '1' or status ~= 'ready' then s = s + UNSCHEDULABLE end
  return s
end

-- The band of a node record (h: field -> value) at now_ms, registered in `bands` when new.
-- The band's `u:<b>` keeps the latest end of a cool-down scored into it: once it has passed,
-- no node of the band is cooling any more (selection then reads it for every job).
local function band_of(prefix, h, now)
  local cooled, latest = {}, 0
  for field, value in pairs(h) do
    if string.sub(field, 1, 8) == 'unavail:' then
      local until_ms = tonumber(value) or 0
      if until_ms > now then
        cooled[#cooled + 1] = string.sub(field, 9)
        if until_ms > latest then latest = until_ms end
      end
    end
  end
  local private = h['public'] == '0'
  if not private and #cooled == 0 then return 0 end
  table.sort(cooled)
  local class = (private and ('@' .. (h['tenant'] or '')) or '') .. '|' .. table.concat(cooled, ',')
  local bands_key = prefix .. 'bands'
  local b = tonumber(redis.call('HGET', bands_key, 'c:' .. class) or '')
  if not b then
    b = redis.call('HINCRBY', bands_key, 'n', 1)
    if b >= MAX_BAND then
      b = MAX_BAND
      redis.call('HSET', bands_key, 'b:' .. b, '*')
    else
      redis.call('HSET', bands_key, 'b:' .. b, class)
    end
    redis.call('HSET', bands_key, 'c:' .. class, b)
  end
  if latest > (tonumber(redis.call('HGET', bands_key, 'u:' .. b) or '0') or 0) then
    redis.call('HSET', bands_key, 'u:' .. b, latest)
  end
  return b
end

-- The score of a node from its record. With now_ms its band is recomputed and kept in the
-- record (`band`); without, the record's band stands (a slot changing hands changes no
-- restriction). nil when the record is gone.
local function node_score(prefix, node_id, now)
  local h = {}
  if now then
    local flat = redis.call('HGETALL', prefix .. 'node:' .. node_id)
    for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  else
    local v = redis.call('HMGET', prefix .. 'node:' .. node_id, 'running', 'reserved',
      'capacity', 'connected', 'status', 'band')
    h = {running = v[1], reserved = v[2], capacity = v[3], connected = v[4], status = v[5],
      band = v[6]}
  end
  if not h['capacity'] then return nil end
  local load = load_of(h['running'], h['reserved'], h['capacity'])
  local band = tonumber(h['band'] or '0') or 0
  if now then
    band = band_of(prefix, h, now)
    if tostring(band) ~= (h['band'] or '0') then
      redis.call('HSET', prefix .. 'node:' .. node_id, 'band', band)
    end
  end
  if h['connected'] ~= '1' or h['status'] ~= 'ready' then return UNSCHEDULABLE + load end
  return BAND * band + load
end

-- The pairs of distinct languages of a shard's language set.
local function shard_pairs(shard_id)
  local langs = split(split(shard_id, ':')[1], '_')
  local out = {}
  for _, a in ipairs(langs) do
    for _, b in ipairs(langs) do
      if a ~= b then out[#out + 1] = a .. ':' .. b end
    end
  end
  return out
end

-- Keep the pair index of a shard: `pairbest:<a>:<b>` scores every shard of `pair:<a>:<b>` by
-- its lowest band-0 free score (NO_FREE when it has none), so the best shard for a pair is
-- one lookup. Called wherever a shard's scores change; a deleted shard leaves the index.
-- force: write every pair's entry (else an unchanged first pair's says they all are).
local function index_shard(prefix, shard_id, force)
  local pairs_of = shard_pairs(shard_id)
  if #pairs_of == 0 then return end
  local pool_key = prefix .. 'pool:' .. shard_id
  local m = redis.call('ZRANGEBYSCORE', pool_key, '-inf', '(1', 'WITHSCORES', 'LIMIT', 0, 1)
  if #m == 0 and redis.call('EXISTS', pool_key) == 0 then
    for _, p in ipairs(pairs_of) do redis.call('ZREM', prefix .. 'pairbest:' .. p, shard_id) end
    return
  end
  local best = m[2] or tostring(NO_FREE)
  local first = prefix .. 'pairbest:' .. pairs_of[1]
  local had = redis.call('ZSCORE', first, shard_id)
  if had and tonumber(had) == tonumber(best) and not force then return end  -- they move together
  for _, p in ipairs(pairs_of) do redis.call('ZADD', prefix .. 'pairbest:' .. p, best, shard_id) end
end

-- Write a node's score in one shard it is a member of (XX: never re-add a shard a sweep just
-- removed it from) and keep the pair index.
local function set_score(prefix, shard_id, node_id, score)
  redis.call('ZADD', prefix .. 'pool:' .. shard_id, 'XX', score, node_id)
  index_shard(prefix, shard_id)
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
    for _, pair in ipairs(shard_pairs(shard_id)) do
      redis.call('SREM', prefix .. 'pair:' .. pair, shard_id)
    end
  end
  index_shard(prefix, shard_id)
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

-- Rewrite a node's score in every shard it belongs to: after a slot changes hands (now_ms
-- nil: its band stands), or with now_ms when its restrictions may have changed.
local function refresh_score(prefix, node_id, now)
  local score = node_score(prefix, node_id, now)
  if not score then return end
  for _, shard_id in ipairs(redis.call('SMEMBERS', prefix .. 'node:' .. node_id .. ':pools')) do
    set_score(prefix, shard_id, node_id, score)
  end
end
