-- heartbeats_applied: node-manager applied a gateway's heartbeat batch: remember its sequence
-- number, the largest seen, so that the gateway keeps only a few batches in flight (its flow
-- control: a slow node-manager makes the gateway's batches larger, never the queue longer);
-- and how far the gateway's beats are applied (its watermark: every beat the gateway read
-- before covers_ms is applied), which the expiry sweeper waits for before it expires a node.
-- KEYS[1] prefix             lingua:v1:{cell}:
--   built from KEYS[1]: heartbeats:applied:<gateway_id>, heartbeats:covered
-- ARGV[1] gateway_id
-- ARGV[2] seq                the batch's sequence number (a positive integer)
-- ARGV[3] ttl_ms             how long the mark outlives the gateway's last batch
-- ARGV[4] covers_ms          the batch's watermark (ms); 0 when the batch carries none
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
local covers = is_int(ARGV[4] or '0')
if not covers or covers < 0 then return {-1, 'covers_ms'} end

local key = prefix .. 'heartbeats:applied:' .. gateway_id
local cur = tonumber(redis.call('GET', key) or '0')
if seq > cur then
  redis.call('SET', key, ARGV[2], 'PX', ttl)
  cur = seq
  if covers > 0 then
    -- one hash per cell, a field per gateway replica: the sweeper reads every watermark in
    -- one call; the fields of replicas gone for good are removed by the sweeper
    local covered = prefix .. 'heartbeats:covered'
    redis.call('HSET', covered, gateway_id, covers)
    redis.call('PEXPIRE', covered, ttl)
  end
else
  redis.call('PEXPIRE', key, ttl)
end
return {1, cur}
