-- gap_expire: a session's next result is overdue: answer its index with missing_result so
-- later results are not blocked forever (J6), and release what is then due.
-- KEYS[1] prefix             lingua:v1:{cell}:
--   built from KEYS[1]: gaps, session:<sid>, session:<sid>:results, session:<sid>:sent
-- ARGV[1] session_id
-- ARGV[2] now_ms
-- ARGV[3] gap_ms             deadline for the next hole, if one remains
-- ARGV[4] session_ttl_ms
-- Returns: {1, gateway_id, conn_id, idx1, payload1, ...} the missing_result and what follows
--          {0, ""} nothing to do: no hole, or its deadline has not passed
--          {-1, field} invalid input, nothing written
--@include common
--@include delivery

local prefix = KEYS[1]
local session_id = ARGV[1]
local now = is_int(ARGV[2])
local gap = is_int(ARGV[3])
local session_ttl = is_int(ARGV[4])
if session_id == '' or #session_id > 128 then return {-1, 'session_id'} end
if not now or now <= 0 then return {-1, 'now_ms'} end
if not gap or gap <= 0 then return {-1, 'gap_ms'} end
if not session_ttl or session_ttl <= 0 then return {-1, 'session_ttl_ms'} end

local deadline = tonumber(redis.call('ZSCORE', prefix .. 'gaps', session_id))
if not deadline or deadline > now then return {0, ''} end
local session_key = prefix .. 'session:' .. session_id
if redis.call('HLEN', session_key .. ':results') == 0 then
  redis.call('ZREM', prefix .. 'gaps', session_id)
  return {0, ''}
end
local idx = tonumber(redis.call('HGET', session_key, 'next_deliver') or '0')
local missing = cjson.encode({type = 'missing_result', session_id = session_id,
  utterance_index = idx, reason = 'gap_timeout', created_at_ms = now})
local due = deliver_outcomes(prefix, session_id, {idx, missing}, now, gap, session_ttl)
local s = redis.call('HMGET', session_key, 'gateway_id', 'conn_id')
return {1, s[1] or '', s[2] or '', unpack(due)}
