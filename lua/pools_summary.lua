-- pools_summary: members and load of a batch of pool shards, summed inside Redis (stats snapshot).
-- Read-only. The caller keeps batches to a few shards (256 members at most each) so Redis is
-- never busy long; per shard, only five numbers cross the wire.
-- KEYS[1] prefix             lingua:v1:{cell}:
--   built from KEYS[1]: pool:<shard>, node:<id>
-- ARGV[1] shard_ids          JSON list of shard ids <langset>:<region>:<gpu_tier>:<n> (at most 64)
-- Returns: {1, {members, schedulable, capacity, running, reserved}, ...} one entry per shard id,
--          in order (a missing shard: all zeros; a member without a record counts as a member
--          only); schedulable as in the live pool view: record connected and ready, and a
--          score below UNSCHEDULABLE
--          {-1, field} invalid input
--@include common
--@include pools

local prefix = KEYS[1]
local ok_s, shards = pcall(cjson.decode, ARGV[1])
if not ok_s or type(shards) ~= 'table' or #shards > 64 then return {-1, 'shard_ids'} end
for _, s in ipairs(shards) do
  if type(s) ~= 'string' or #s > 200
      or not string.match(s, '^[a-z0-9_]+:[a-z0-9][a-z0-9_.-]*:[a-z0-9][a-z0-9_.-]*:%d+$') then
    return {-1, 'shard_ids'}
  end
end

local rows = {}
for i, shard_id in ipairs(shards) do
  local flat = redis.call('ZRANGE', prefix .. 'pool:' .. shard_id, 0, -1, 'WITHSCORES')
  local sched, cap, run, res = 0, 0, 0, 0
  for j = 1, #flat, 2 do
    local r = redis.call('HMGET', prefix .. 'node:' .. flat[j],
      'capacity', 'running', 'reserved', 'connected', 'status')
    if r[1] then
      cap = cap + (tonumber(r[1]) or 0)
      run = run + (tonumber(r[2]) or 0)
      res = res + (tonumber(r[3]) or 0)
      if r[4] == '1' and r[5] == 'ready' and tonumber(flat[j + 1]) < UNSCHEDULABLE then
        sched = sched + 1
      end
    end
  end
  rows[i] = {#flat / 2, sched, cap, run, res}
end
return {1, unpack(rows)}
