-- Pool shards and load scores: membership, the score that selection reads, removal.
-- Needs common.

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
