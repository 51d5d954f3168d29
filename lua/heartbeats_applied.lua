-- heartbeats_applied: node-manager applied a gateway's heartbeat batch: remember its sequence
-- number, the largest seen, so that the gateway keeps only a few batches in flight (its flow
-- control: a slow node-manager makes the gateway's batches larger, never the queue longer).
-- KEYS[1] prefix             lingua:v1:{cell}:
--   built from KEYS[1]: heartbeats:applied:<gateway_id>
-- ARGV[1] gateway_id
-- ARGV[2] seq                the batch's sequence number (a positive integer)
-- ARGV[3] ttl_ms             how long the mark outlives the gateway's last batch
-- Returns: {1, seq}          the largest sequence number applied (this one or a later one)
--          {-1, field}       invalid input, nothing written
--@include common

local prefix = KEYS[1]
local gateway_id = ARGV[1]
if gateway_id == '' or #gateway_id > 128 then return {-1, 'gateway_id'} end
local seq = is_int(ARGV[2])
if not seq or seq <= 0 then return {-1, 'seq'} end
local ttl = is_int(ARGV[3])
if not ttl or ttl <= 0 then return {-1, 'ttl_ms'} end

local key = prefix .. 'heartbeats:applied:' .. gateway_id
local cur = tonumber(redis.call('GET', key) or '0')
if seq > cur then
  redis.call('SET', key, ARGV[2], 'PX', ttl)
  cur = seq
else
  redis.call('PEXPIRE', key, ttl)
end
return {1, cur}
