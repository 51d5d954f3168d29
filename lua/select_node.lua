-- select_node: pick the least loaded eligible node for a job attempt and take its slot.
-- KEYS[1] prefix             lingua:v1:{cell}:
--   built from KEYS[1]: job:<job_id>, session:<sid>, pair:<a>:<b>, pool:<shard>,
--     poolgroup:<group>, pools:index, node:<id>, node:<id>:pools, node:<id>:jobs, timers,
--     stats:exclusions, stats:unserved
-- ARGV[1] job_id
-- ARGV[2] attempt            the attempt this reservation is for (fencing token, from 1)
-- ARGV[3] now_ms
-- ARGV[4] lease_ms           how long the slot waits for job_ack (nodes that ack their jobs)
-- ARGV[5] pair_src           selection pair: the pool's language set must contain both
-- ARGV[6] pair_tgt
-- ARGV[7] services           JSON list of service types the job needs (e.g. ["asr","semantic"])
-- ARGV[8] policy             pack | spread
-- ARGV[9] candidates         how many of the lowest scores to examine per shard
-- ARGV[10] wait_until_ms     until when the job may wait for a free slot (0 = no waiting)
-- ARGV[11] retry_ms          when waiting, how soon to try again
-- ARGV[12] deadline_ms       how long the job may run on its node before it is taken back
-- ARGV[13] tenant            the session's tenant ('' = none): a node that takes no public
--                            jobs takes only the jobs of its own tenant
-- A node that acks its jobs (its record's `acks` = 1) gets the job as a reservation that
-- job_ack commits (state assigned, timer = lease); any other node (lingua's agent never acks)
-- has it accepted at assignment (state acked, its slot running, timer = deadline).
-- The session stays on its node (`pref_node`) while that node is eligible; when it is busy
-- the job spills to another node and the session keeps its node; when it is gone (expired,
-- disconnected, not ready, no longer covering the pair) the node chosen now becomes the
-- session's node.
-- Returns: {1, node_id, gateway_id, conn_id, shard_id, state} the slot is taken; state is
--          assigned | acked (or the same reservation again when this attempt already has
--          one: a replay)
--          {-4, reason, waiting} no node: reason no_covering_pool | no_free_slot;
--          waiting = 1 when the job now waits for a slot (a timer will retry it)
--          {-5, state} the job is not waiting for a node (already assigned, done, ...)
--          {-6, ""} no such job
--          {-1, field} invalid input, nothing written
--@include common
--@include pools
--@include slots

local prefix = KEYS[1]
local job_id = ARGV[1]
local attempt = is_int(ARGV[2])
local now = is_int(ARGV[3])
local lease = is_int(ARGV[4])
local src, tgt = ARGV[5], ARGV[6]
local policy = ARGV[8]
local k = is_int(ARGV[9])
local wait_until = is_int(ARGV[10])
local retry = is_int(ARGV[11])
local deadline = is_int(ARGV[12])
local tenant = ARGV[13]
if not is_node_id(job_id) then return {-1, 'job_id'} end
if not attempt or attempt < 1 then return {-1, 'attempt'} end
if not now or now <= 0 then return {-1, 'now_ms'} end
if not lease or lease <= 0 then return {-1, 'lease_ms'} end
if not is_lang(src) then return {-1, 'pair_src'} end
if not is_lang(tgt) or tgt == src then return {-1, 'pair_tgt'} end
local ok, services = pcall(cjson.decode, ARGV[7])
if not ok or type(services) ~= 'table' or #services > 16 then return {-1, 'services'} end
for _, svc in ipairs(services) do
  if not is_label(svc) then return {-1, 'services'} end
end
if policy ~= 'pack' and policy ~= 'spread' then return {-1, 'policy'} end
if not k or k < 1 or k > 64 then return {-1, 'candidates'} end
if not wait_until or wait_until < 0 then return {-1, 'wait_until_ms'} end
if not retry or retry <= 0 then return {-1, 'retry_ms'} end
if not deadline or deadline <= 0 then return {-1, 'deadline_ms'} end
if tenant == nil or (tenant ~= '' and not is_node_id(tenant)) then return {-1, 'tenant'} end

local job_key = prefix .. 'job:' .. job_id
local job = redis.call('HMGET', job_key, 'state', 'attempt', 'node_id', 'session_id', 'tried',
  'shard', 'assigned_at', 'acked_at')
if not job[1] then return {-6, ''} end
local state, job_attempt = job[1], tonumber(job[2])
-- a replay: this attempt's slot was taken by the call being replayed (acked at assignment
-- too, for a node that does not ack; a job its node really acked is not waiting for one)
local accepted_at_assignment = state == 'acked' and job[7] ~= false and job[7] == job[8]
if (state == 'assigned' or accepted_at_assignment) and job_attempt == attempt then
  local n = redis.call('HMGET', prefix .. 'node:' .. job[3], 'gateway_id', 'conn_id')
  return {1, job[3], n[1] or '', n[2] or '', job[6] or '', state}
end
if (state ~= 'queued' and state ~= 'waiting') or job_attempt >= attempt then
  return {-5, state}
end

local tried = {}
for id in string.gmatch(job[5] or '', '[^,]+') do tried[id] = true end
local session_key = prefix .. 'session:' .. (job[4] or '')
local shards = redis.call('SMEMBERS', prefix .. 'pair:' .. src .. ':' .. tgt)
if #shards == 0 then
  redis.call('HINCRBY', prefix .. 'stats:unserved', src .. ':' .. tgt, 1)
  return {-4, 'no_covering_pool', 0}
end

local NODE_FIELDS = {'capacity', 'running', 'reserved', 'connected', 'status', 'gateway_id',
  'conn_id', 'reg_id', 'registered_at', 'acks', 'public', 'tenant'}
-- The node's record if it may take this job now, else nil and why not.
local function eligible(node_id)
  local node_key = prefix .. 'node:' .. node_id
  local n = redis.call('HMGET', node_key, unpack(NODE_FIELDS))
  if not n[1] then return nil, 'expired' end
  if n[4] ~= '1' or n[5] ~= 'ready' then return nil, 'not_connected' end
  if tried[node_id] then return nil, 'already_tried' end
  if n[11] == '0' and (tenant == '' or n[12] ~= tenant) then return nil, 'private' end
  if tonumber(n[2] or 0) + tonumber(n[3] or 0) >= tonumber(n[1]) then return nil, 'no_free_slot' end
  for _, svc in ipairs(services) do
    local until_ms = tonumber(redis.call('HGET', node_key, 'unavail:' .. svc) or '0')
    if until_ms > now then return nil, 'service_unavailable' end
  end
  return n
end

local sess = redis.call('HMGET', session_key, 'pref_shard', 'pref_node')
local preferred, pref_node = sess[1], sess[2]
local best, best_shard, best_node = nil, nil, nil
-- the session has no node of its own that lives (none yet, or it is gone): the node chosen
-- now becomes its node
local pref_gone = true

if pref_node then
  local n, why = eligible(pref_node)
  if n then
    local covering = {}
    for _, s in ipairs(shards) do covering[s] = true end
    for _, shard_id in ipairs(redis.call('SMEMBERS', prefix .. 'node:' .. pref_node .. ':pools')) do
      if covering[shard_id] then
        best, best_node, best_shard = n, pref_node, shard_id
        pref_gone = false
        break
      end
    end
  elseif why == 'no_free_slot' or why == 'service_unavailable' or why == 'already_tried'
      or why == 'private' then
    pref_gone = false  -- alive but not for this job: spill, and keep the session's node
  end
end

if preferred and policy == 'pack' then
  -- affinity (J3): the session's pool first; soft: the others when it has no free slot.
  -- A preferred shard that no longer covers the pair (it was emptied) is skipped.
  local ordered, found = {preferred}, false
  for _, s in ipairs(shards) do
    if s ~= preferred then ordered[#ordered + 1] = s else found = true end
  end
  if found then shards = ordered else preferred = nil end
end

local job_hash = 0
for c = 1, #job_id do job_hash = (job_hash * 31 + string.byte(job_id, c)) % 1000003 end

local excluded = {}
local function exclude(reason) excluded[reason] = (excluded[reason] or 0) + 1 end
local best_score = nil
local ties = 0
for i, shard_id in ipairs(best_node and {} or shards) do
  local pool_key = prefix .. 'pool:' .. shard_id
  local members = redis.call('ZRANGEBYSCORE', pool_key, '-inf', '(1', 'WITHSCORES', 'LIMIT', 0, k)
  if #members == 0 then exclude('pool_full') end
  for j = 1, #members, 2 do
    local node_id, score = members[j], tonumber(members[j + 1])
    if best_score ~= nil and score > best_score then break end  -- sorted: nothing better here
    local n, why = eligible(node_id)
    if not n then
      exclude(why)
      if why == 'expired' then
        -- the node's TTL passed: lazily take it out of the shard with the shard's count (an
        -- emptied shard leaves the index); the sweeper does the rest
        leave_shard(prefix, node_id, shard_id)
      end
    else
      if best_score == nil or score < best_score then
        best_score, best_node, best_shard, best, ties = score, node_id, shard_id, n, 1
      elseif score == best_score and policy == 'spread' then
        -- spread: equally loaded nodes take turns (reservoir choice keyed by the job id)
        ties = ties + 1
        if (job_hash + attempt) % ties == 0 then
          best_node, best_shard, best = node_id, shard_id, n
        end
      end
      -- members come sorted by score: pack stops at a shard's first eligible node; spread
      -- goes on only through nodes exactly as loaded as the best
      if policy == 'pack' then break end
    end
  end
  if best_node and i == 1 and shard_id == preferred and policy == 'pack' then break end
  -- pack keeps the first of equally loaded nodes, so once it holds an idle one (score 0, the
  -- lowest there is) the shards left could only tie: reading them would cost a round of
  -- calls per shard (40 shards at 10,000 nodes of a pair) and change nothing
  if best_score ~= nil and best_score <= 0 and policy == 'pack' then break end
end

for reason, count in pairs(excluded) do
  redis.call('HINCRBY', prefix .. 'stats:exclusions', reason, count)
end

if not best_node then
  if wait_until > now then
    redis.call('HSET', job_key, 'state', 'waiting', 'wait_until', wait_until)
    redis.call('ZADD', prefix .. 'timers', now + retry, job_id)
    return {-4, 'no_free_slot', 1}
  end
  return {-4, 'no_free_slot', 0}
end

local node_key = prefix .. 'node:' .. best_node
local new_state, timer = 'acked', now + deadline
if best[10] == '1' then
  new_state, timer = 'assigned', now + lease
  redis.call('HINCRBY', node_key, 'reserved', 1)
else
  redis.call('HINCRBY', node_key, 'running', 1)
end
redis.call('SADD', node_key .. ':jobs', job_id)
refresh_score(prefix, best_node)
local tried_list = job[5] or ''
if tried_list ~= '' then tried_list = tried_list .. ',' end
redis.call('HSET', job_key, 'state', new_state, 'attempt', attempt, 'node_id', best_node,
  'node_reg', registration_of(best[8], best[9]), 'shard', best_shard, 'assigned_at', now,
  'tried', tried_list .. best_node)
if new_state == 'acked' then redis.call('HSET', job_key, 'acked_at', now) end
redis.call('ZADD', prefix .. 'timers', timer, job_id)
if job[4] and redis.call('EXISTS', session_key) == 1 then
  redis.call('HSETNX', session_key, 'pref_shard', best_shard)
  if pref_gone then redis.call('HSET', session_key, 'pref_node', best_node) end
end
return {1, best_node, best[6] or '', best[7] or '', best_shard, new_state}
