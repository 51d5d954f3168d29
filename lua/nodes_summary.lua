-- nodes_summary: counts and load of a batch of node records, summed inside Redis (stats snapshot).
-- Read-only. The snapshot walks every node in batches of a few hundred ids, so Redis is never
-- busy long and only totals cross the wire: no per-node reply to build and parse. An id that
-- is not a node id, a node key that is not a hash, or a record with a malformed field is
-- skipped and named, never an error: the ids come from nodes:all, and one corrupt record must
-- not stop every snapshot.
-- KEYS[1] prefix             lingua:v1:{cell}:
--   built from KEYS[1]: node:<id>
-- ARGV[1] node_ids           JSON list of strings (at most 1000): node ids
-- Returns: {1, alive, schedulable, capacity, running, reserved, by_region, by_gpu_tier,
--          unschedulable, invalid}
--          alive: well-formed records that exist; schedulable: connected = 1 and status
--          ready; capacity/running/reserved: sums over alive records; by_region,
--          by_gpu_tier: flat {label, count, ...} over alive records; unschedulable: the
--          ids of the batch that are not schedulable (missing records included), in input
--          order; invalid: the ids skipped as above (is_node_record), in input order, in no
--          other count or list
--          {-1, field} invalid input: not a JSON list of at most 1000 strings
--@include common

local prefix = KEYS[1]
local ok_n, ids = pcall(cjson.decode, ARGV[1])
if not ok_n or type(ids) ~= 'table' or #ids > 1000 then return {-1, 'node_ids'} end
for _, id in ipairs(ids) do
  if type(id) ~= 'string' then return {-1, 'node_ids'} end
end

local alive, schedulable, cap_sum, run_sum, res_sum = 0, 0, 0, 0, 0
local regions, tiers, unschedulable, invalid = {}, {}, {}, {}
local function bump(t, label)
  t[label] = (t[label] or 0) + 1
end
for _, id in ipairs(ids) do
  -- pcall: a node key of another type answers an error table instead of raising
  local r = is_node_id(id) and redis.pcall('HMGET', prefix .. 'node:' .. id, 'capacity',
    'running', 'reserved', 'connected', 'status', 'region', 'gpu_tier', 'lang_sets')
  if not r or r.err or (r[1] and not is_node_record(r[1], r[2], r[3], r[6], r[7], r[8])) then
    invalid[#invalid + 1] = id
  else
    if r[1] then
      alive = alive + 1
      cap_sum = cap_sum + tonumber(r[1])
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
end
local function flat(t)
  local out = {}
  for label, n in pairs(t) do
    out[#out + 1] = label
    out[#out + 1] = n
  end
  return out
end
return {1, alive, schedulable, cap_sum, run_sum, res_sum, flat(regions), flat(tiers), unschedulable,
  invalid}
