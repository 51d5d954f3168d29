-- service_cooldown: a node reported a service unusable (MODEL_NOT_AVAILABLE): selection skips
-- the node for jobs needing that service until the cool-down ends (J7). The node moves to the
-- score band of its restrictions (lib/pools), so it never sits among the free nodes that jobs
-- needing the service read; a storm of reports only moves the end forward.
-- KEYS[1] node hash          lingua:v1:{cell}:node:<id>
-- KEYS[2] prefix             lingua:v1:{cell}:
--   built from KEYS[2]: node:<id>:pools, pool:<shard>, pairbest:<a>:<b>, bands
-- ARGV[1] node_id
-- ARGV[2] service            asr | nmt | tts | semantic | ...
-- ARGV[3] until_ms           end of the cool-down
-- ARGV[4] now_ms             0 = unknown: every cool-down recorded counts as running until
--                            the node's next heartbeat scores it again
-- Returns: {1, until_ms} set or extended; {0, ""} no such node (nothing written)
--          {-1, field} invalid input, nothing written
--@include common
--@include pools

local prefix = KEYS[2]
local node_id, service = ARGV[1], ARGV[2]
local until_ms = is_int(ARGV[3])
local now = is_int(ARGV[4])
if not is_node_id(node_id) then return {-1, 'node_id'} end
if not is_label(service) then return {-1, 'service'} end
if not until_ms or until_ms <= 0 then return {-1, 'until_ms'} end
if not now or now < 0 then return {-1, 'now_ms'} end
if KEYS[1] ~= prefix .. 'node:' .. node_id then return {-1, 'node_id'} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, ''} end
local field = 'unavail:' .. service
local current = tonumber(redis.call('HGET', KEYS[1], field) or '0')
if until_ms > current then
  redis.call('HSET', KEYS[1], field, until_ms)
  refresh_score(prefix, node_id, now)
end
return {1, math.max(until_ms, current)}
