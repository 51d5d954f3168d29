-- service_cooldown: a node reported a service unusable (MODEL_NOT_AVAILABLE): selection skips
-- the node for jobs needing that service until the cool-down ends (J7). One HSET on
-- the hot path; a storm of reports only moves the end forward.
-- KEYS[1] node hash          lingua:v1:{cell}:node:<id>
-- ARGV[1] node_id
-- ARGV[2] service            asr | nmt | tts | semantic | ...
-- ARGV[3] until_ms           end of the cool-down
-- Returns: {1, until_ms} set or extended; {0, ""} no such node (nothing written)
--          {-1, field} invalid input, nothing written
--@include common

local node_id, service = ARGV[1], ARGV[2]
local until_ms = is_int(ARGV[3])
if not is_node_id(node_id) then return {-1, 'node_id'} end
if not is_label(service) then return {-1, 'service'} end
if not until_ms or until_ms <= 0 then return {-1, 'until_ms'} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, ''} end
local field = 'unavail:' .. service
local current = tonumber(redis.call('HGET', KEYS[1], field) or '0')
if until_ms > current then redis.call('HSET', KEYS[1], field, until_ms) end
return {1, math.max(until_ms, current)}
