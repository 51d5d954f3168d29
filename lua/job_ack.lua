-- job_ack: the node took the job: commit the reservation into a running slot, and remember
-- that the node acks (its later jobs wait for its ack under a lease).
-- KEYS[1] prefix             lingua:v1:{cell}:
--   built from KEYS[1]: job:<job_id>, node:<id>, node:<id>:pools, pool:<shard>,
--     pairbest:<a>:<b>, timers
-- ARGV[1] job_id
-- ARGV[2] attempt            the attempt the node acknowledges
-- ARGV[3] node_id            the node the acknowledgement came from (its connection's id)
-- ARGV[4] now_ms
-- ARGV[5] deadline_ms        how long the job may run before it is taken back
-- Returns: {1, session_id} committed; {0, session_id} already committed (a replay)
--          {-5, reason} stale: another attempt or another node (dropped and counted)
--          {-6, ""} no such job; {-1, field} invalid input, nothing written
--@include common
--@include pools
--@include slots

local prefix = KEYS[1]
local job_id, node_id = ARGV[1], ARGV[3]
local attempt = is_int(ARGV[2])
local now = is_int(ARGV[4])
local deadline = is_int(ARGV[5])
if not is_node_id(job_id) then return {-1, 'job_id'} end
if not attempt or attempt < 1 then return {-1, 'attempt'} end
if not is_node_id(node_id) then return {-1, 'node_id'} end
if not now or now <= 0 then return {-1, 'now_ms'} end
if not deadline or deadline <= 0 then return {-1, 'deadline_ms'} end

local job_key = prefix .. 'job:' .. job_id
local job = redis.call('HMGET', job_key, 'state', 'attempt', 'node_id', 'session_id', 'node_reg')
if not job[1] then return {-6, ''} end
if tonumber(job[2]) ~= attempt then return {-5, 'stale_attempt'} end
if job[3] ~= node_id then return {-5, 'wrong_node'} end
local node_key = prefix .. 'node:' .. node_id
-- a node that acks gets its next jobs as reservations that wait for its ack (select_node)
if (job[1] == 'acked' or job[1] == 'assigned')
    and redis.call('HGET', node_key, 'acks') == '0' then
  redis.call('HSET', node_key, 'acks', '1')
end
-- acked already: a replay, or a job accepted at assignment (its node was not known to ack)
if job[1] == 'acked' then return {0, job[4]} end
if job[1] ~= 'assigned' then return {-5, 'state_' .. job[1]} end

-- the reservation moves to running only in the registration that granted it (see
-- same_registration): a node that expired or registered anew has no such slot to commit
if same_registration(node_key, job[5]) then
  if tonumber(redis.call('HGET', node_key, 'reserved') or '0') > 0 then
    redis.call('HINCRBY', node_key, 'reserved', -1)
  end
  redis.call('HINCRBY', node_key, 'running', 1)
  refresh_score(prefix, node_id)
end
redis.call('HSET', job_key, 'state', 'acked', 'acked_at', now)
redis.call('ZADD', prefix .. 'timers', now + deadline, job_id)
return {1, job[4]}
