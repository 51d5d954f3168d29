-- job_release: take a job back from its node (ack timeout, deadline, node gone, unroutable,
-- node refused it) so it can be dispatched again, a bounded number of times (J5).
-- KEYS[1] prefix             lingua:v1:{cell}:
--   built from KEYS[1]: job:<job_id>, node:<id>, node:<id>:jobs, node:<id>:pools,
--     pool:<shard>, pairbest:<a>:<b>, timers
-- ARGV[1] job_id
-- ARGV[2] attempt            the attempt being taken back (fencing: another one is left alone)
-- ARGV[3] reason             ack_timeout | deadline | node_lost | unroutable | refused | ...
-- ARGV[4] now_ms
-- ARGV[5] max_attempts
-- A released job keeps a timer RESCUE_MS (1 s) ahead, so it is dispatched again (or failed,
-- with no attempt left) even if the caller dies right after this call (a reservation replaces
-- that timer with its lease). With no attempt left the job is 'exhausted': never dispatched
-- again, and a replay of this call answers {2, ...} again, never a further attempt.
-- Returns: {1, next_attempt, node_id, gateway_id, conn_id} released: dispatch it again with
--          next_attempt (node_id and the connection it had, to tell it with job_cancel)
--          {2, attempts, node_id, gateway_id, conn_id} released, and no attempt is left:
--          finish it with a typed error (also the answer to a replay of that release)
--          {0, state} nothing to do: that attempt is no longer current (a replay or a race)
--          {-6, ""} no such job; {-1, field} invalid input, nothing written
--@include common
--@include pools
--@include slots

local prefix = KEYS[1]
local job_id, reason = ARGV[1], ARGV[3]
local attempt = is_int(ARGV[2])
local now = is_int(ARGV[4])
local max_attempts = is_int(ARGV[5])
if not is_node_id(job_id) then return {-1, 'job_id'} end
if not attempt or attempt < 1 then return {-1, 'attempt'} end
if reason == '' or #reason > 64 then return {-1, 'reason'} end
if not now or now <= 0 then return {-1, 'now_ms'} end
if not max_attempts or max_attempts < 1 then return {-1, 'max_attempts'} end

local job_key = prefix .. 'job:' .. job_id
local job = redis.call('HMGET', job_key, 'state', 'attempt', 'node_id', 'node_reg')
if not job[1] then return {-6, ''} end
local current = tonumber(job[2]) == attempt
if current and job[1] == 'exhausted' then
  -- a replay of the release that used the last attempt: the same answer, nothing written
  local conn = redis.call('HMGET', prefix .. 'node:' .. job[3], 'gateway_id', 'conn_id')
  return {2, attempt, job[3], conn[1] or '', conn[2] or ''}
end
if not current or (job[1] ~= 'assigned' and job[1] ~= 'acked') then
  return {0, job[1]}
end
local conn = redis.call('HMGET', prefix .. 'node:' .. job[3], 'gateway_id', 'conn_id')
local node = {job[3], conn[1] or '', conn[2] or ''}
if take_back(prefix, job_id, job[1], attempt, job[3], job[4], reason, now, max_attempts) then
  return {2, attempt, unpack(node)}
end
return {1, attempt + 1, unpack(node)}
