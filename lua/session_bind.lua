-- session_bind: bind a session to a client connection, or unbind a connection that ends.
-- `resume`: a client that lost its connection takes its session up on a new one (on any
-- gateway): the record is bound to the new connection (answers are routed there from now on)
-- and what the gateway needs to go on comes back: the record (spec, `next_deliver`), the
-- first-come answered set and the outbox, whose outcomes it replays.
-- `unbind`: a connection ended; the binding is removed only if it is still that connection's
-- (a session resumed elsewhere keeps its new binding).
-- KEYS[1] prefix             lingua:v1:{cell}:
--   built from KEYS[1]: session:<sid>, session:<sid>:sent, session:<sid>:outbox,
--     sessions:active, outbox
-- ARGV[1] session_id
-- ARGV[2] mode               resume | unbind
-- ARGV[3] gateway_id         the gateway holding the connection
-- ARGV[4] conn_id            the connection
-- ARGV[5] client             the client token's subject ("" when auth is off): a session
--                            opened by a client is resumed only by that client
-- ARGV[6] now_ms
-- ARGV[7] session_ttl_ms
-- Returns: {1, old_gateway_id, old_conn_id, {field1, value1, ...}, {sent1, ...},
--          {idx1, payload1, ...}} resumed: the binding it replaced, the record, the answered
--          indices above next_deliver (first-come sessions) and the outbox
--          {2, ""} unbound
--          {0, ""} unbind: the session is bound to another connection, or to none: nothing
--          written
--          {-5, ""} resume: the session is another client's: nothing written
--          {-6, ""} no such session (expired or never opened): nothing written
--          {-1, field} invalid input, nothing written
--@include common

local prefix = KEYS[1]
local session_id, mode, gateway_id, conn_id, client = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now = is_int(ARGV[6])
local ttl = is_int(ARGV[7])
if session_id == '' or #session_id > 128 or string.find(session_id, '[{}:]') then
  return {-1, 'session_id'}
end
if mode ~= 'resume' and mode ~= 'unbind' then return {-1, 'mode'} end
if gateway_id == '' or #gateway_id > 128 then return {-1, 'gateway_id'} end
if conn_id == '' or #conn_id > 128 then return {-1, 'conn_id'} end
if #client > 256 then return {-1, 'client'} end
if not now or now <= 0 then return {-1, 'now_ms'} end
if not ttl or ttl <= 0 then return {-1, 'session_ttl_ms'} end

local key = prefix .. 'session:' .. session_id
local active = prefix .. 'sessions:active'
if mode == 'unbind' then
  local bound = redis.call('HMGET', key, 'gateway_id', 'conn_id')
  if bound[1] ~= gateway_id or bound[2] ~= conn_id then return {0, ''} end
  redis.call('HDEL', key, 'gateway_id', 'conn_id')
  redis.call('ZREM', active, session_id)
  return {2, ''}
end

local h = redis.call('HMGET', key, 'mode', 'client', 'gateway_id', 'conn_id')
if not h[1] then return {-6, ''} end
if h[2] and h[2] ~= '' and h[2] ~= client then return {-5, ''} end
redis.call('HSET', key, 'gateway_id', gateway_id, 'conn_id', conn_id)
redis.call('PEXPIRE', key, ttl)
redis.call('ZADD', active, now, session_id)
local box = redis.call('HGETALL', key .. ':outbox')
-- the new gateway replays it; should that replay never be acknowledged, it is published again
if #box > 0 then redis.call('ZADD', prefix .. 'outbox', now, session_id) end
for i = 1, #box, 2 do box[i] = tonumber(box[i]) end
return {1, h[3] or '', h[4] or '', redis.call('HGETALL', key),
  redis.call('SMEMBERS', key .. ':sent'), box}
