-- register_node_v2: write (or refresh) a node's record with its liveness TTL; no pool work.
-- KEYS[1] node hash          lingua:v1:{cell}:node:<id>
-- KEYS[2] nodes:all          set of registered node ids
-- KEYS[3] nodes:expiry       zset node id -> logical expiry ms (the sweeper's index)
-- KEYS[4] nodes:connected    zset display view of "connected"
-- KEYS[5] ended connections  lingua:v1:{cell}:node:<id>:retired (lib/fence: the replaced and
--                            ended connections of a record that was removed)
-- ARGV[1] node_id
-- ARGV[2] now_ms
-- ARGV[3] ttl_ms
-- ARGV[4] region
-- ARGV[5] gpu_tier
-- ARGV[6] lang_sets          JSON list of language lists
-- ARGV[7] capacity           1..256 concurrent jobs
-- ARGV[8] services           JSON object: service type -> languages
-- ARGV[9] gateway_id         gateway replica holding the connection
-- ARGV[10] conn_id           id of that connection (fences events of older connections)
-- ARGV[11] meta              JSON object (version, platform, ...) kept for display
-- ARGV[12] acks              1 = the node sends job_ack (its jobs wait for the ack under a
--                            lease), 0 = it never does (jobs count as accepted at assignment)
-- ARGV[13] public            1 = takes public jobs, 0 = only jobs of its own tenant
-- ARGV[14] tenant            the node's tenant ('' = none)
-- Returns: {1, "", ""} created; {2, old_gateway_id, old_conn_id} refreshed an existing node
--          (old_* are those of the connection it replaces, "" when none or the same);
--          {-3, "", ""} stale: a newer connection replaced this one, or this connection
--          ended (a late or repeated registration of a connection already gone); nothing
--          written
--          {-1, field} invalid input, nothing written (field names the bad argument)
--@include common
--@include fence

local node_key, all_key, expiry_key, connected_key, ended_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local node_id = ARGV[1]
local now = is_int(ARGV[2])
local ttl = is_int(ARGV[3])
local region, gpu = ARGV[4], ARGV[5]
local lang_sets = parse_lang_sets(ARGV[6])
local capacity = is_int(ARGV[7])
local gateway_id, conn_id = ARGV[9], ARGV[10]

if not is_node_id(node_id) then return {-1, 'node_id'} end
if not now or now <= 0 then return {-1, 'now_ms'} end
if not ttl or ttl <= 0 then return {-1, 'ttl_ms'} end
if not is_label(region) then return {-1, 'region'} end
if not is_label(gpu) then return {-1, 'gpu_tier'} end
if not lang_sets then return {-1, 'lang_sets'} end
if not capacity or capacity < 1 or capacity > 256 then return {-1, 'capacity'} end
local ok_s, services = pcall(cjson.decode, ARGV[8])
if not ok_s or type(services) ~= 'table' then return {-1, 'services'} end
if gateway_id == '' or #gateway_id > 128 then return {-1, 'gateway_id'} end
if conn_id == '' or #conn_id > 128 then return {-1, 'conn_id'} end
local ok_m, meta = pcall(cjson.decode, ARGV[11])
if not ok_m or type(meta) ~= 'table' then return {-1, 'meta'} end
local acks, public, tenant = ARGV[12], ARGV[13], ARGV[14]
if acks ~= '0' and acks ~= '1' then return {-1, 'acks'} end
if public ~= '0' and public ~= '1' then return {-1, 'public'} end
if tenant == nil or (tenant ~= '' and not is_node_id(tenant)) then return {-1, 'tenant'} end

local existed = redis.call('EXISTS', node_key) == 1
local old_gw, old_conn = '', ''
local retired = nil
if existed then
  local prev = redis.call('HMGET', node_key, 'gateway_id', 'conn_id', 'connected')
  if prev[2] and prev[2] ~= conn_id then
    if is_retired(node_key, conn_id) then return {-3, '', ''} end
    retired = retired_with(node_key, prev[2])
    if prev[3] == '1' then old_gw, old_conn = prev[1] or '', prev[2] end
  end
else
  retired = inherited_retired(ended_key, conn_id)
  if retired == nil then return {-3, '', ''} end
end

redis.call('HSET', node_key,
  'node_id', node_id,
  'region', region,
  'gpu_tier', gpu,
  'lang_sets', cjson.encode(lang_sets),
  'capacity', capacity,
  'services', ARGV[8],
  'meta', ARGV[11],
  'status', 'ready',
  'connected', '1',
  'gateway_id', gateway_id,
  'conn_id', conn_id,
  'ttl_ms', ttl,
  'last_heartbeat_ts', now,
  'acks', acks,
  'public', public,
  'tenant', tenant)
if retired then redis.call('HSET', node_key, 'retired_conns', retired) end
if not existed and retired then redis.call('DEL', ended_key) end
if not existed then
  -- slot accounting starts at zero; a re-registration keeps it (leases still count).
  -- reg_id names this registration for the jobs' fencing (node_reg): the time alone is not
  -- enough, since a node can leave and register again within one millisecond (or on another
  -- node-manager replica whose clock reads the same); the connection makes it unique.
  redis.call('HSET', node_key, 'registered_at', now, 'reg_id', now .. '/' .. conn_id,
    'running', 0, 'reserved', 0, 'pool_sig', '')
end
redis.call('PEXPIRE', node_key, ttl + NODE_RECORD_GRACE_MS)
redis.call('SADD', all_key, node_id)
redis.call('ZADD', expiry_key, now + ttl, node_id)
redis.call('ZADD', connected_key, now, node_id)
if existed then return {2, old_gw, old_conn} end
return {1, '', ''}
