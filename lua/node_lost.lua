-- node_lost: a node's connection ended: take back, in one call, every job it holds (J5).
-- KEYS[1] prefix             lingua:v1:{cell}:
--   built from KEYS[1]: node:<id>, node:<id>:jobs, node:<id>:pools, job:<job_id>,
--     pool:<shard>, pairbest:<a>:<b>, timers
-- ARGV[1] node_id
-- ARGV[2] conn_id            the connection that ended
-- ARGV[3] now_ms
-- ARGV[4] max_attempts
-- Fenced by connection as node_offline is: when the node's record names another connection
-- (the node is back on a newer one, or this one was replaced), nothing is taken. A node whose
-- record is gone has its jobs taken back all the same. Each job of node:<id>:jobs whose
-- current attempt is on this node is taken back as job_release takes it (reason node_lost,
-- rescue timer, 'exhausted' when no attempt is left); members whose job moved on or expired
-- leave the set, and the node's counts are recounted from what is left (lib/slots).
-- Returns: {1, job_id, code, attempt, ...} for each job taken back: code 1 with its next
--          attempt (dispatch it again), or code 2 with its last one (no attempt left: fail
--          it); none on a replay (the jobs were taken back already)
--          {0, conn_id} stale: the record names a newer connection (conn_id): nothing written
--          {-1, field} invalid input, nothing written
--@include common
--@include pools
--@include slots

local prefix = KEYS[1]
local node_id, conn_id = ARGV[1], ARGV[2]
local now = is_int(ARGV[3])
local max_attempts = is_int(ARGV[4])
if not is_node_id(node_id) then return {-1, 'node_id'} end
if conn_id == '' or #conn_id > 128 then return {-1, 'conn_id'} end
if not now or now <= 0 then return {-1, 'now_ms'} end
if not max_attempts or max_attempts < 1 then return {-1, 'max_attempts'} end

local node_key = prefix .. 'node:' .. node_id
local current = redis.call('HGET', node_key, 'conn_id')
if current and current ~= conn_id then return {0, current} end

local taken = {}
for _, job_id in ipairs(redis.call('SMEMBERS', node_key .. ':jobs')) do
  local job = redis.call('HMGET', prefix .. 'job:' .. job_id, 'state', 'attempt', 'node_id',
    'node_reg')
  local attempt = tonumber(job[2])
  if job[3] == node_id and attempt and (job[1] == 'assigned' or job[1] == 'acked') then
    local exhausted = take_back(prefix, job_id, job[1], attempt, node_id, job[4], 'node_lost',
      now, max_attempts)
    taken[#taken + 1] = job_id
    taken[#taken + 1] = exhausted and 2 or 1
    taken[#taken + 1] = exhausted and attempt or attempt + 1
  end
end
recount_slots(prefix, node_id)
return {1, unpack(taken)}
