-- job_finish: a job ends (its result, or a typed error): free its slot and release every
-- outcome of its session that is now due (J5, J6). A node answers a session's jobs in
-- the order they reached it, so its answer to this job also ends the jobs of the session that
-- reached it before this one and are still open (the gateway saw the order on the socket and
-- lists them): they end without a result (their slots are freed, nothing is dispatched again,
-- the client gets missing_result reason no_result). An answer of an attempt that node_lost
-- took back (the node's connection ended just after it sent it) still ends the job while no
-- other attempt has been dispatched.
-- KEYS[1] prefix             lingua:v1:{cell}:
--   built from KEYS[1]: job:<job_id>, job:<job_id>:audio, node:<id>, node:<id>:jobs,
--     node:<id>:pools, pool:<shard>, pairbest:<a>:<b>, timers, session:<sid>, session:<sid>:results,
--     session:<sid>:sent, session:<sid>:waiting, session:<sid>:outbox, outbox, gaps
-- ARGV[1] job_id
-- ARGV[2] attempt            the attempt that ends (0 = the scheduler ends it: no fencing)
-- ARGV[3] node_id            the node reporting ("" when the scheduler ends it)
-- ARGV[4] now_ms
-- ARGV[5] outcome            done | failed
-- ARGV[6] payload            JSON message for the client (translation_result or error)
-- ARGV[7] gap_ms             how long a hole in the order may hold later outcomes
-- ARGV[8] session_ttl_ms
-- ARGV[9] earlier            JSON list of [job_id, attempt]: jobs that reached the node before
--                            this one on the same connection (ended only if they are still that
--                            node's attempt, of this session, and open); [] for none
-- Returns: {1, gateway_id, conn_id, idx1, payload1, ...} finished; the list holds the
--          outcomes now due for the session (maybe none: an earlier one is missing), those of
--          the earlier jobs ended without a result included
--          {0, gateway_id, conn_id, idx1, payload1, ...} already finished (a replay or a
--          duplicate result): nothing written; the outcomes its finish released that are still
--          in the session's outbox (none: {0, ""}), for the caller to publish again
--          {3, ""} finished, but its index was already answered by a missing_result
--          {-5, reason} stale: another attempt or another node; nothing written
--          {-6, ""} no such job; {-1, field} invalid input, nothing written
--@include common
--@include pools
--@include slots
--@include delivery

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
local ok_e, earlier = pcall(cjson.decode, ARGV[9])
if not ok_e or type(earlier) ~= 'table' or #earlier > 1024 then return {-1, 'earlier'} end
for _, e in ipairs(earlier) do
  if type(e) ~= 'table' or not is_node_id(e[1]) or not is_int(e[2]) then
    return {-1, 'earlier'}
  end
end

local job_key = prefix .. 'job:' .. job_id
local job = redis.call('HMGET', job_key, 'state', 'attempt', 'node_id', 'session_id',
  'utterance_index', 'gateway_id', 'conn_id', 'node_reg')
if not job[1] then return {-6, ''} end
if job[1] == 'done' or job[1] == 'failed' then
  -- a replay (its caller died before publishing?): the same deliveries, while unacknowledged
  local again = outbox_get(prefix, job[4], split(redis.call('HGET', job_key, 'released') or '', ','))
  if #again == 0 then return {0, ''} end
  local s = redis.call('HMGET', prefix .. 'session:' .. job[4], 'gateway_id', 'conn_id')
  return {0, s[1] or '', s[2] or '', unpack(again)}
end
if node_id ~= '' then
  if tonumber(job[2]) ~= attempt then return {-5, 'stale_attempt'} end
  if job[3] ~= node_id then return {-5, 'wrong_node'} end
  if job[1] ~= 'assigned' and job[1] ~= 'acked' then
    -- The node's connection ended right after it sent this answer, and the goodbye's take
    -- back (node_lost) ran first (one queue, handled concurrently; or two replicas). Until
    -- the job is dispatched again, the answer of the attempt it took back still ends it:
    -- better than a missing_result, or doing the work again elsewhere.
    local late = (job[1] == 'queued' or job[1] == 'exhausted')
      and redis.call('HGET', job_key, 'release_reason') == 'node_lost'
    if not late then return {-5, 'state_' .. job[1]} end
  end
end

if job[1] == 'assigned' or job[1] == 'acked' then
  release_slot(prefix, job_id, job[3], job[1], job[8])
end
redis.call('ZREM', prefix .. 'timers', job_id)
redis.call('HSET', job_key, 'state', outcome, 'finished_at', now)
redis.call('DEL', job_key .. ':audio')

local session_id = job[4]
local own_idx = tonumber(job[5])
local items = {}
if node_id ~= '' then
  local ended = {}
  for _, e in ipairs(earlier) do
    local other, other_attempt = e[1], tonumber(e[2])
    local o = redis.call('HMGET', prefix .. 'job:' .. other, 'state', 'session_id', 'node_id',
      'attempt', 'node_reg', 'utterance_index', 'trace_id')
    if (o[1] == 'assigned' or o[1] == 'acked') and o[2] == session_id and o[3] == node_id
        and tonumber(o[4]) == other_attempt and other ~= job_id then
      ended[#ended + 1] = {other, o}
    end
  end
  table.sort(ended, function(a, b) return tonumber(a[2][6]) < tonumber(b[2][6]) end)
  for _, e in ipairs(ended) do
    local other, o = e[1], e[2]
    release_slot(prefix, other, node_id, o[1], o[5])
    redis.call('ZREM', prefix .. 'timers', other)
    redis.call('HSET', prefix .. 'job:' .. other, 'state', 'done', 'finished_at', now,
      'outcome', 'no_result')
    redis.call('DEL', prefix .. 'job:' .. other .. ':audio')
    items[#items + 1] = tonumber(o[6])
    items[#items + 1] = cjson.encode({type = 'missing_result', session_id = session_id,
      utterance_index = tonumber(o[6]), reason = 'no_result', created_at_ms = now,
      job_id = other, trace_id = o[7] or nil})
  end
end
items[#items + 1] = own_idx
items[#items + 1] = ARGV[6]

local due, taken = deliver_outcomes(prefix, session_id, items, now, gap, session_ttl)
if #due == 0 and not taken[own_idx] then return {3, ''} end
if #due > 0 then
  -- what this finish released, so that a replay of it returns the same deliveries
  local released = {}
  for i = 1, #due, 2 do released[#released + 1] = due[i] end
  redis.call('HSET', job_key, 'released', table.concat(released, ','))
end
local s = redis.call('HMGET', prefix .. 'session:' .. session_id, 'gateway_id', 'conn_id')
-- a closed session has no gateway binding: nothing to publish (the gateway holds no one)
return {1, s[1] or '', s[2] or '', unpack(due)}
