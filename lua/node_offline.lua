-- node_offline: take a node out of scheduling, fully (graceful, expired) or for a grace period.
-- KEYS[1] node hash          lingua:v1:{cell}:node:<id>
-- KEYS[2] node pools         lingua:v1:{cell}:node:<id>:pools
-- KEYS[3] nodes:all
-- KEYS[4] nodes:expiry
-- KEYS[5] nodes:connected
-- KEYS[6] prefix             lingua:v1:{cell}:
--   built from KEYS[6]: pool:<shard>, poolgroup:<group>, pools:index, pair:<a>:<b>,
--     pairbest:<a>:<b>, node:<id>:retired
-- ARGV[1] node_id
-- ARGV[2] mode               graceful | dropped | expired
--                            graceful: clean close or drain -> remove the node and its pools now
--                            dropped:  abnormal drop -> keep record and pools for the TTL grace,
--                                      but unschedulable (score pushed out of range) until a
--                                      gateway holds a connection again
--                            expired:  sweeper -> remove if the node's TTL has passed
-- ARGV[3] conn_id            the connection that ended ("" = whichever; for expired ignored)
-- ARGV[4] now_ms
-- Returns: {1, pools_removed} done (dropped: pools_removed = 0, pools kept)
--          {0, 0} nothing to do: the node is already gone (a replay, or never registered)
--          {-1, field} invalid input, nothing written
--          {-2, 0} stale: a newer connection owns the node; nothing written
--          {-3, 0} not expired: the node is alive; nothing written
--@include common
--@include pools
--@include fence

local node_key, pools_key, all_key, expiry_key, connected_key, prefix =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local node_id, mode, conn_id = ARGV[1], ARGV[2], ARGV[3]
local now = is_int(ARGV[4])

if not is_node_id(node_id) then return {-1, 'node_id'} end
if mode ~= 'graceful' and mode ~= 'dropped' and mode ~= 'expired' then return {-1, 'mode'} end
if #conn_id > 128 then return {-1, 'conn_id'} end
if not now or now <= 0 then return {-1, 'now_ms'} end

local h = redis.call('HMGET', node_key, 'conn_id', 'connected', 'running', 'reserved',
  'capacity', 'status')
local alive = h[1] ~= false or redis.call('EXISTS', node_key) == 1
local known = alive or redis.call('SISMEMBER', all_key, node_id) == 1
  or redis.call('EXISTS', pools_key) == 1

local ended_key = prefix .. 'node:' .. node_id .. ':retired'
if mode == 'expired' then
  if not known then return {0, 0} end
  local deadline = tonumber(redis.call('ZSCORE', expiry_key, node_id))
  if alive and deadline and deadline > now then return {-3, 0} end
  -- a connection still open (connected) may beat again: it is told to register, not fenced
  remember_ended(node_key, ended_key, h[2] == '0' and h[1] or '')
  return {1, remove_node(prefix, node_id, node_key, pools_key, all_key, expiry_key, connected_key)}
end

if conn_id ~= '' and alive and h[1] and h[1] ~= conn_id then return {-2, 0} end

if mode == 'graceful' then
  -- the connection is over: none of its beats or registrations still on the bus may bring
  -- the node back, even when its registration has not been applied yet
  local ended = conn_id
  if ended == '' then ended = h[1] or '' end
  remember_ended(node_key, ended_key, ended)
  if not known then return {0, 0} end
  return {1, remove_node(prefix, node_id, node_key, pools_key, all_key, expiry_key, connected_key)}
end

-- dropped
if not alive then return {0, 0} end
if h[2] == '0' then return {0, 0} end
redis.call('HSET', node_key, 'connected', '0', 'disconnected_at', now)
redis.call('ZREM', connected_key, node_id)
local score = load_score(h[3], h[4], h[5], '0', h[6])
for _, shard_id in ipairs(redis.call('SMEMBERS', pools_key)) do
  set_score(prefix, shard_id, node_id, score)
end
return {1, 0}
