-- slots_reconcile: recount nodes' reserved and running slots from their live jobs, so that a
-- slot whose job record expired (a dispatcher outage longer than the job TTL) is never lost.
-- KEYS[1] prefix             lingua:v1:{cell}:
--   built from KEYS[1]: node:<id>, node:<id>:jobs, node:<id>:pools, job:<job_id>,
--     pool:<shard>, pairbest:<a>:<b>
-- ARGV[1] node_ids           JSON list of 1 to 500 node ids (the sweeper's batch)
-- Each node's counts become those of the jobs in node:<id>:jobs that are live, on this node,
-- of its current registration and assigned (reserved) or acked (running); members whose job
-- is gone or moved on leave the set; counts and scores are written only when they differ
-- (lib/slots recount_slots). A node without a record is skipped. Replay-safe: a second run
-- finds the counts right.
-- Returns: {1, fixed, dropped} fixed: nodes whose counts were rewritten; dropped: job set
--          members removed
--          {-1, field} invalid input, nothing written
--@include common
--@include pools
--@include slots

local prefix = KEYS[1]
local ok, node_ids = pcall(cjson.decode, ARGV[1])
if not ok or type(node_ids) ~= 'table' or #node_ids < 1 or #node_ids > 500 then
  return {-1, 'node_ids'}
end
for _, id in ipairs(node_ids) do
  if not is_node_id(id) then return {-1, 'node_ids'} end
end

local fixed, dropped = 0, 0
for _, id in ipairs(node_ids) do
  local f, d = recount_slots(prefix, id)
  if f then
    fixed = fixed + f
    dropped = dropped + d
  end
end
return {1, fixed, dropped}
