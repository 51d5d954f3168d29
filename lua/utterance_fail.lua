-- utterance_fail: answer an utterance that never becomes a job (its request could not be
-- queued, or it is only silence) with a message for the client (missing_result) in its place
-- in the session's delivery, and release what is then due (J6: exactly one answer per
-- index; no gap left to time out).
-- KEYS[1] prefix             lingua:v1:{cell}:
--   built from KEYS[1]: session:<sid>, session:<sid>:results, session:<sid>:sent,
--     session:<sid>:waiting, session:<sid>:outbox, outbox, gaps
-- ARGV[1] session_id
-- ARGV[2] utterance_index
-- ARGV[3] now_ms
-- ARGV[4] payload            JSON message for the client (a missing_result)
-- ARGV[5] gap_ms             deadline for the next hole, if one remains
-- ARGV[6] session_ttl_ms
-- Returns: {1, gateway_id, conn_id, idx1, payload1, ...} stored; the outcomes now due, in order
--          (maybe none: an earlier one is missing)
--          {0, ""} the index is answered already, or an answer waits for it: nothing written
--          {-6, ""} no such session: nothing written
--          {-1, field} invalid input, nothing written
--@include common
--@include delivery

local prefix = KEYS[1]
local session_id = ARGV[1]
local idx = is_int(ARGV[2])
local now = is_int(ARGV[3])
local gap = is_int(ARGV[5])
local session_ttl = is_int(ARGV[6])
if session_id == '' or #session_id > 128 then return {-1, 'session_id'} end
if not idx or idx < 0 then return {-1, 'utterance_index'} end
if not now or now <= 0 then return {-1, 'now_ms'} end
local ok, decoded = pcall(cjson.decode, ARGV[4])
if not ok or type(decoded) ~= 'table' then return {-1, 'payload'} end
if not gap or gap <= 0 then return {-1, 'gap_ms'} end
if not session_ttl or session_ttl <= 0 then return {-1, 'session_ttl_ms'} end

local session_key = prefix .. 'session:' .. session_id
if redis.call('EXISTS', session_key) == 0 then return {-6, ''} end
local next_idx = tonumber(redis.call('HGET', session_key, 'next_deliver') or '0')
if idx < next_idx or redis.call('HEXISTS', session_key .. ':results', idx) == 1
    or redis.call('SISMEMBER', session_key .. ':sent', idx) == 1 then
  return {0, ''}
end
local due = deliver_outcomes(prefix, session_id, {idx, ARGV[4]}, now, gap, session_ttl)
local s = redis.call('HMGET', session_key, 'gateway_id', 'conn_id')
return {1, s[1] or '', s[2] or '', unpack(due)}
