-- outbox_ack: a gateway wrote these outcomes of a session to its client: remove exactly those
-- indices from the session's outbox (and the session from the outbox index once its outbox
-- is empty), so that they are neither published nor replayed again.
-- KEYS[1] prefix             lingua:v1:{cell}:
--   built from KEYS[1]: session:<sid>:outbox, outbox
-- ARGV[1] session_id
-- ARGV[2] indices            JSON list of utterance indices (at most 1024)
-- Returns: {1, left} removed (a replay removes nothing more); left: outcomes still in the outbox
--          {-1, field} invalid input, nothing written
--@include common

local prefix = KEYS[1]
local session_id = ARGV[1]
if session_id == '' or #session_id > 128 then return {-1, 'session_id'} end
local ok, indices = pcall(cjson.decode, ARGV[2])
if not ok or type(indices) ~= 'table' or #indices > 1024 then return {-1, 'indices'} end
for _, i in ipairs(indices) do
  local n = is_int(i)
  if not n or n < 0 then return {-1, 'indices'} end
end

local box = prefix .. 'session:' .. session_id .. ':outbox'
if #indices > 0 then redis.call('HDEL', box, unpack(indices)) end
local left = redis.call('HLEN', box)
if left == 0 then redis.call('ZREM', prefix .. 'outbox', session_id) end
return {1, left}
