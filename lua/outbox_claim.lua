-- outbox_claim: claim the sessions whose outbox has held an outcome unacknowledged for
-- retry_ms since it was (last) published, so that one dispatcher replica publishes it again
-- (its publisher died before publishing, or the gateway before writing it to the client). A
-- claim moves the session's time to now: another replica takes it only retry_ms later. A
-- session that no live gateway holds (closed, or its gateway's liveness key is gone) leaves
-- the index: its outbox waits for a resume of the session (session_bind), which replays it.
-- KEYS[1] prefix             lingua:v1:{cell}:
--   built from KEYS[1]: outbox, session:<sid>, session:<sid>:outbox, gateway:<instance>
-- ARGV[1] now_ms
-- ARGV[2] retry_ms           how long an outcome may stay unacknowledged after its publish
-- ARGV[3] limit              at most this many sessions per call
-- Returns: {1, {session_id, gateway_id, conn_id, {idx1, payload1, ...}}, ...} claimed (maybe
--          none)
--          {-1, field} invalid input, nothing written
--@include common

local prefix = KEYS[1]
local now = is_int(ARGV[1])
local retry = is_int(ARGV[2])
local limit = is_int(ARGV[3])
if not now or now <= 0 then return {-1, 'now_ms'} end
if not retry or retry <= 0 then return {-1, 'retry_ms'} end
if not limit or limit < 1 or limit > 1000 then return {-1, 'limit'} end

local index = prefix .. 'outbox'
local claimed = {}
local due = redis.call('ZRANGEBYSCORE', index, '-inf', now - retry, 'LIMIT', 0, limit)
for _, sid in ipairs(due) do
  local entries = redis.call('HGETALL', prefix .. 'session:' .. sid .. ':outbox')
  local s = redis.call('HMGET', prefix .. 'session:' .. sid, 'gateway_id', 'conn_id')
  if #entries == 0 or not s[1] or s[1] == ''
      or redis.call('EXISTS', prefix .. 'gateway:' .. s[1]) == 0 then
    redis.call('ZREM', index, sid)
  else
    redis.call('ZADD', index, 'XX', now, sid)
    for i = 1, #entries, 2 do entries[i] = tonumber(entries[i]) end
    claimed[#claimed + 1] = {sid, s[1], s[2] or '', entries}
  end
end
return {1, unpack(claimed)}
