-- nodes_summary: counts and load of a batch of node records, summed inside Redis (stats snapshot).
-- Read-only. The snapshot walks every node in batches of a few hundred ids, so Redis is never
-- busy long and only totals cross the wire: no per-node reply to build and parse.
-- KEYS[1] prefix             lingua:v1:{cell}:
--   built from KEYS[1]: node:<id>
-- ARGV[1] node_ids           JSON list of node ids (at most 1000)
-- Returns: {1, alive, schedulable, capacity, running, reserved, by_region, by_gpu_tier, unschedulable}
--          alive: records that exist; schedulable: connected = 1 and status ready;
--          capacity/running/reserved: sums over alive records; by_region, by_gpu_tier: flat
--          {label, count, ...} over alive records; unschedulable: the ids of the batch that are
--          not schedulable (missing records included), in input order
--          {-1, field} invalid input
--@include common

local prefix = KEYS[1]
local ok_n, ids = pcall(cjson.decode, ARGV[1])
if not ok_n or type(ids) ~= 'table' or #ids > 1000 then return {-1, 'node_ids'} end
for _, id in ipairs(ids) do
  if not is_node_id(id) then return {-1, 'node_ids'} end
end

local alive, schedulable, cap_sum, run_sum, res_sum = 0, 0, 0, 0, 0
local regions, tiers, unschedulable = {}, {}, {}
local function bump(t, label)
  if not label or label == '' then label = '?' end
  t[label] = (t[label] or 0) + 1
end
for _, id in ipairs(ids) do
  local r = redis.call('HMGET', prefix .. 'node:' .. id,
    'capacity', 'running', 'reserved', 'connected', 'status', 'region', 'gpu_tier')
  if r[1] then
    alive = alive + 1
    cap_sum = cap_sum + (tonumber(r[1]) or 0)
    run_sum = run_sum + (tonumber(r[2]) or 0)
    res_sum = res_sum + (tonumber(r[3]) or 0)
    bump(regions, r[6])
    bump(tiers, r[7])
  end
  if r[1] and r[4] == '1' and r[5] == 'ready' then
    schedulable = schedulable + 1
  else
    unschedulable[#unschedulable + 1] = id
  end
end
local function flat(t)
  local out = {}
  for label, n in pairs(t) do
    out[#out + 1] = label
    out[#out + 1] = n
  end
  return out
end
return {1, alive, schedulable, cap_sum, run_sum, res_sum, flat(regions), flat(tiers), unschedulable}
