-- job_finish: a job ends (its result, or a typed error): free its slot and release every
-- outcome of its session that is now due, in utterance order (MISSION J5, J6).
-- KEYS[1] prefix             lingua:v1:{cell}: (job, node, session, timers, gaps)
-- ARGV[1] job_id
-- ARGV[2] attempt            the attempt that ends (0 = the scheduler ends it: no fencing)
-- ARGV[3] node_id            the node reporting ("" when the scheduler ends it)
-- ARGV[4] now_ms
-- ARGV[5] outcome            done | failed
-- ARGV[6] payload            JSON message for the client (translation_result or error)
-- ARGV[7] gap_ms             how long a hole in the order may hold later outcomes
-- ARGV[8] session_ttl_ms
-- Returns: {1, gateway_id, conn_id, idx1, payload1, ...} finished; the list holds the
--          outcomes now due for the session, in order (maybe none: an earlier one is missing)
--          {0, ""} already finished (a replay or a duplicate result): nothing written
--          {3, ""} finished, but its index was already answered by a missing_result
--          {-5, reason} stale: another attempt or another node; nothing written
--          {-6, ""} no such job; {-1, field} invalid input, nothing written
--@include common

local prefix = KEYS[1]
local job_id, node_id, outcome = ARGV[1], ARGV[3], ARGV[5]
local attempt = is_int(ARGV[2])
local now = is_int(ARGV[4])
local gap = is_int(ARGV[7])
local session_ttl = is_int(ARGV[8])
if not is_node_id(job_id) then return {-1, 'job_id'} end
if not attempt or attempt < 0 then return {-1, 'attempt'} end
if node_id ~= '' and not is_node_id(node_id) then return {-1, 'node_id'} end
if not now or now <= 0 then return {-1, 'now_ms'} end
if outcome ~= 'done' and outcome ~= 'failed' then return {-1, 'outcome'} end
local ok = pcall(cjson.decode, ARGV[6])
if not ok then return {-1, 'payload'} end
if not gap or gap <= 0 then return {-1, 'gap_ms'} end
if not session_ttl or session_ttl <= 0 then return {-1, 'session_ttl_ms'} end

local job_key = prefix .. 'job:' .. job_id
local job = redis.call('HMGET', job_key, 'state', 'attempt', 'node_id', 'session_id',
  'utterance_index', 'gateway_id', 'conn_id', 'node_reg')
if not job[1] then return {-6, ''} end
if job[1] == 'done' or job[1] == 'failed' then return {0, ''} end
if node_id ~= '' then
  if tonumber(job[2]) ~= attempt then return {-5, 'stale_attempt'} end
  if job[3] ~= node_id then return {-5, 'wrong_node'} end
  if job[1] ~= 'assigned' and job[1] ~= 'acked' then return {-5, 'state_' .. job[1]} end
end

if job[1] == 'assigned' or job[1] == 'acked' then
  release_slot(prefix, job_id, job[3], job[1], job[8])
end
redis.call('ZREM', prefix .. 'timers', job_id)
redis.call('HSET', job_key, 'state', outcome, 'finished_at', now)
redis.call('DEL', job_key .. ':audio')

local session_id = job[4]
local due = deliver_in_order(prefix, session_id, tonumber(job[5]), ARGV[6], now, gap, session_ttl)
if due == nil then return {3, ''} end
local s = redis.call('HMGET', prefix .. 'session:' .. session_id, 'gateway_id', 'conn_id')
-- a closed session has no gateway binding: nothing to publish (the gateway holds no one)
return {1, s[1] or '', s[2] or '', unpack(due)}
