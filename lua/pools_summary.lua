-- pools_summary: members and load of a batch of pool shards, summed inside Redis (stats snapshot).
-- Read-only. The caller keeps batches to a few shards (256 members at most each) so Redis is
-- never busy long; per shard, only five numbers cross the wire. An entry that is not a shard
-- id, or a pool key that is not a sorted set, is skipped (an empty row), never an error: the
-- ids come from pools:index, and one corrupt entry must not stop every snapshot.
-- KEYS[1] prefix             lingua:v1:{cell}:
--   built from KEYS[1]: pool:<shard>, node:<id>
-- ARGV[1] shard_ids          JSON list of strings (at most 64): shard ids
--                            <langset>:<region>:<gpu_tier>:<n> (is_shard_id in lib/common)
-- Returns: {1, row, ...} one row per entry, in order: {members, schedulable, capacity,
--          running, reserved} (a missing shard: all zeros; a member without a record, or
--          whose slot counts are malformed (is_node_counts), counts as a member only);
--          schedulable as in the live pool view: record connected and ready, and a score
--          below UNSCHEDULABLE; an empty row for an entry skipped as above
--          {-1, field} invalid input: not a JSON list of at most 64 strings
--@include common
--@include pools

local prefix = KEYS[1]
local ok_s, shards = pcall(cjson.decode, ARGV[1])
if not ok_s or type(shards) ~= 'table' or #shards > 64 then return {-1, 'shard_ids'} end
for _, s in ipairs(shards) do
  if type(s) ~= 'string' then return {-1, 'shard_ids'} end
end

local rows = {}
for i, shard_id in ipairs(shards) do
  -- pcall: a pool key of another type answers an error table instead of raising
  local flat = is_shard_id(shard_id)
    and redis.pcall('ZRANGE', prefix .. 'pool:' .. shard_id, 0, -1, 'WITHSCORES')
  if not flat or flat.err then
    rows[i] = {}
  else
    local sched, cap, run, res = 0, 0, 0, 0
    for j = 1, #flat, 2 do
      -- any member names a key of the cell (its hash tag comes first); pcall: a key of
      -- another type answers an error table instead of raising
      local r = redis.pcall('HMGET', prefix .. 'node:' .. flat[j],
        'capacity', 'running', 'reserved', 'connected', 'status')
      if r and not r.err and r[1] and is_node_counts(r[1], r[2], r[3]) then
        cap = cap + tonumber(r[1])
        run = run + (tonumber(r[2]) or 0)
        res = res + (tonumber(r[3]) or 0)
        if r[4] == '1' and r[5] == 'ready' and tonumber(flat[j + 1]) < UNSCHEDULABLE then
          sched = sched + 1
        end
      end
    end
    rows[i] = {#flat / 2, sched, cap, run, res}
  end
end
return {1, unpack(rows)}
