-- gap_expire: a session's next result is overdue: answer its index with missing_result so
-- later results are not blocked forever (J6), and release what is then due. A hole's deadline
-- runs from when the oldest outcome it holds became ready, so the holes before an outcome
-- that waited its gap are all overdue: they are answered together (at most 64 per call; the
-- rest one gap later, so a client that skips far ahead cannot make a flood of answers).
-- KEYS[1] prefix             lingua:v1:{cell}:
--   built from KEYS[1]: gaps, session:<sid>, session:<sid>:results, session:<sid>:sent,
--     session:<sid>:waiting, session:<sid>:outbox, outbox
-- ARGV[1] session_id
-- ARGV[2] now_ms
-- ARGV[3] gap_ms             how long a hole may hold a later outcome that is ready
-- ARGV[4] session_ttl_ms
-- Returns: {1, gateway_id, conn_id, idx1, payload1, ...} the missing_results and what follows
--          {0, ""} nothing to do: no hole, or its deadline has not passed
--          {-1, field} invalid input, nothing written
--@include common
--@include delivery

local MAX_HOLES = 64
local prefix = KEYS[1]
local session_id = ARGV[1]
local now = is_int(ARGV[2])
local gap = is_int(ARGV[3])
local session_ttl = is_int(ARGV[4])
if session_id == '' or #session_id > 128 then return {-1, 'session_id'} end
if not now or now <= 0 then return {-1, 'now_ms'} end
if not gap or gap <= 0 then return {-1, 'gap_ms'} end
if not session_ttl or session_ttl <= 0 then return {-1, 'session_ttl_ms'} end

local gaps_key = prefix .. 'gaps'
local deadline = tonumber(redis.call('ZSCORE', gaps_key, session_id))
if not deadline or deadline > now then return {0, ''} end
local session_key = prefix .. 'session:' .. session_id
if redis.call('HLEN', session_key .. ':results') == 0 then
  redis.call('ZREM', gaps_key, session_id)
  return {0, ''}
end
local due = {}
for _ = 1, MAX_HOLES do
  local idx = tonumber(redis.call('HGET', session_key, 'next_deliver') or '0')
  local missing = cjson.encode({type = 'missing_result', session_id = session_id,
    utterance_index = idx, reason = 'gap_timeout', created_at_ms = now})
  local out = deliver_outcomes(prefix, session_id, {idx, missing}, now, gap, session_ttl)
  for _, v in ipairs(out) do due[#due + 1] = v end
  deadline = tonumber(redis.call('ZSCORE', gaps_key, session_id))
  if not deadline or deadline > now then break end
  -- a first-come session holds nothing in order: one answer per call, as before
  if redis.call('HGET', session_key, 'delivery') == 'arrival' then deadline = nil; break end
end
if deadline and deadline <= now then
  -- still overdue after MAX_HOLES answers: the rest waits one more gap
  redis.call('ZADD', gaps_key, now + gap, session_id)
end
local s = redis.call('HMGET', session_key, 'gateway_id', 'conn_id')
return {1, s[1] or '', s[2] or '', unpack(due)}
