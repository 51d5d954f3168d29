-- heartbeat_batch: many nodes' heartbeats in one call, each applied exactly as
-- heartbeat_with_pool_assign applies one (node-manager's heartbeat batches: one command per
-- batch instead of one per beat; the batch is cut small enough to keep each call short).
-- KEYS[1] prefix             lingua:v1:{cell}:
--   built from KEYS[1]: node:<id>, node:<id>:pools, nodes:expiry, nodes:connected,
--     pool:<shard>, poolgroup:<group>, pools:index, pair:<a>:<b>, pairbest:<a>:<b>, bands
-- ARGV[1] gateway_id         gateway replica holding the beats' connections
-- ARGV[2] now_ms
-- ARGV[3] max_shard_size     maximum members of one pool shard
-- ARGV[4] beats              JSON list (1 to 1000) of [node_id, conn_id, running_jobs,
--                            cpu_percent, gpu_percent, mem_percent, status, lang_sets,
--                            services], each as heartbeat_with_pool_assign's ARGV of that name
-- Returns: {1, replies}      replies: heartbeat_with_pool_assign's reply for each beat, in order
--          {-1, field}       invalid input, nothing written
--@include common
--@include pools
--@include fence
--@include heartbeat

local prefix = KEYS[1]
local gateway_id, now_arg, shard_arg = ARGV[1], ARGV[2], ARGV[3]
if gateway_id == '' or #gateway_id > 128 then return {-1, 'gateway_id'} end
if not is_int(now_arg) then return {-1, 'now_ms'} end
if not is_int(shard_arg) then return {-1, 'max_shard_size'} end
local ok, beats = pcall(cjson.decode, ARGV[4])
if not ok or type(beats) ~= 'table' or #beats < 1 or #beats > 1000 then
  return {-1, 'beats'}
end
for _, b in ipairs(beats) do
  if type(b) ~= 'table' or #b ~= 9 then return {-1, 'beats'} end
  for i = 1, 9 do
    if type(b[i]) ~= 'string' then return {-1, 'beats'} end
  end
end

local replies = {}
for i, b in ipairs(beats) do
  local node_id = b[1]
  local node_key = prefix .. 'node:' .. node_id
  replies[i] = apply_heartbeat(node_key, node_key .. ':pools', prefix .. 'nodes:expiry',
    prefix .. 'nodes:connected', prefix,
    {node_id, b[2], gateway_id, now_arg, '0', b[3], b[4], b[5], b[6], shard_arg, b[7], b[8], b[9]})
end
return {1, replies}
