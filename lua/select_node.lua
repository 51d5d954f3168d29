-- select_node: pick the least loaded eligible node for a job attempt and take its slot.
-- KEYS[1] prefix             lingua:v1:{cell}:
--   built from KEYS[1]: job:<job_id>, session:<sid>, pair:<a>:<b>, pairbest:<a>:<b>,
--     pool:<shard>, poolgroup:<group>, pools:index, bands, node:<id>, node:<id>:pools,
--     node:<id>:jobs, timers, stats:exclusions, stats:unserved
-- ARGV[1] job_id
-- ARGV[2] attempt            the attempt this reservation is for (fencing token, from 1)
-- ARGV[3] now_ms
-- ARGV[4] lease_ms           how long the slot waits for job_ack (nodes that ack their jobs)
-- ARGV[5] pair_src           selection pair: the pool's language set must contain both
-- ARGV[6] pair_tgt
-- ARGV[7] services           JSON list of service types the job needs (e.g. ["asr","semantic"])
-- ARGV[8] policy             pack | spread
-- ARGV[9] candidates         page size: how many of the lowest scores to read at a time
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

local UNSERVED_PAIRS_MAX = 256  -- stats:unserved fields (pairs), 'other' beyond
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
local pair_key = prefix .. 'pair:' .. src .. ':' .. tgt
if redis.call('SCARD', pair_key) == 0 then
  -- display only, and bounded: a pair not counted yet gets a field of its own only while
  -- fewer than UNSERVED_PAIRS_MAX pairs have one; beyond that it counts under 'other'
  local unserved_key, field = prefix .. 'stats:unserved', src .. ':' .. tgt
  if redis.call('HEXISTS', unserved_key, field) == 0
      and redis.call('HLEN', unserved_key) >= UNSERVED_PAIRS_MAX then
    field = 'other'
  end
  redis.call('HINCRBY', unserved_key, field, 1)
  return {-4, 'no_covering_pool', 0}
end
local index_key = prefix .. 'pairbest:' .. src .. ':' .. tgt
if redis.call('ZCARD', index_key) ~= redis.call('SCARD', pair_key) then
  -- the pair index lacks shards (pools written before it existed): index them, and drop the
  -- entries of shards that no longer cover the pair. Once: every score write keeps it.
  for _, shard_id in ipairs(redis.call('SMEMBERS', pair_key)) do
    index_shard(prefix, shard_id, true)
  end
  for _, shard_id in ipairs(redis.call('ZRANGE', index_key, 0, -1)) do
    if redis.call('SISMEMBER', pair_key, shard_id) == 0 then
      redis.call('ZREM', index_key, shard_id)
    end
  end
end

local NODE_FIELDS = {'capacity', 'running', 'reserved', 'connected', 'status', 'gateway_id',
  'conn_id', 'reg_id', 'registered_at', 'acks', 'public', 'tenant'}
local FIRST_COOL = #NODE_FIELDS + 1
for _, svc in ipairs(services) do NODE_FIELDS[#NODE_FIELDS + 1] = 'unavail:' .. svc end
-- The node's record if it may take this job now, else nil and why not (one HMGET).
local function eligible(node_id)
  local n = redis.call('HMGET', prefix .. 'node:' .. node_id, unpack(NODE_FIELDS))
  if not n[1] then return nil, 'expired' end
  if n[4] ~= '1' or n[5] ~= 'ready' then return nil, 'not_connected' end
  if tried[node_id] then return nil, 'already_tried' end
  if n[11] == '0' and (tenant == '' or n[12] ~= tenant) then return nil, 'private' end
  if tonumber(n[2] or 0) + tonumber(n[3] or 0) >= tonumber(n[1]) then return nil, 'no_free_slot' end
  for i = FIRST_COOL, #NODE_FIELDS do
    if tonumber(n[i] or '0') > now then return nil, 'service_unavailable' end
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
    for _, shard_id in ipairs(redis.call('SMEMBERS', prefix .. 'node:' .. pref_node .. ':pools')) do
      if redis.call('SISMEMBER', pair_key, shard_id) == 1 then
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

-- affinity (J3) is pack's: the session's pool first, the others when it has no free node. A
-- preferred shard that no longer covers the pair (it was emptied) is skipped.
if preferred and (policy ~= 'pack' or redis.call('SISMEMBER', pair_key, preferred) == 0) then
  preferred = nil
end

-- A session's hash: spread places sessions, so equally loaded nodes take turns by session
-- (by job for a job without one).
local spread_key = job[4] or job_id
local spread_hash = 0
for c = 1, #spread_key do
  spread_hash = (spread_hash * 31 + string.byte(spread_key, c)) % 1000003
end

local excluded = {}
local function exclude(reason) excluded[reason] = (excluded[reason] or 0) + 1 end
-- Members whose score says "free" while their record says otherwise are put right after the
-- choice (never while paging: a write would shift the pages): an expired record leaves the
-- shard, a record ahead of its score (a lost connection, a new cool-down, a lower capacity)
-- is scored again. So each such member is read past once, and every page after it is free.
local gone, stale = {}, {}
local best_score = nil
local ties = {}       -- spread: eligible candidates of the best score, at most k
-- Offer the members of one shard with a score in [lo, hi) (a band's free range), cheapest
-- first, paging past the ineligible ones: the nodes this job already tried (at most its
-- attempts), and records ahead of their scores (put right afterwards).
local function scan_shard(shard_id, lo, hi)
  local pool_key = prefix .. 'pool:' .. shard_id
  local offset = 0
  while true do
    local members = redis.call('ZRANGEBYSCORE', pool_key, lo, '(' .. hi, 'WITHSCORES',
      'LIMIT', offset, k)
    for j = 1, #members, 2 do
      local node_id, score = members[j], tonumber(members[j + 1])
      -- sorted: nothing better in this shard (pack keeps the first of equal ones)
      if best_score ~= nil
          and (score > best_score or (score == best_score and policy == 'pack')) then
        return
      end
      local n, why = eligible(node_id)
      if not n then
        exclude(why)
        if why == 'expired' then
          gone[#gone + 1] = {node_id, shard_id}
        elseif why ~= 'already_tried' then
          stale[node_id] = true
        end
      elseif policy == 'pack' then
        best_score, best_node, best_shard, best = score, node_id, shard_id, n
        return
      else
        if best_score == nil or score < best_score then
          best_score, ties = score, {}
        end
        ties[#ties + 1] = {node_id, shard_id, n}
        if #ties >= k then return end
      end
    end
    if #members < 2 * k then return end
    offset = offset + k
  end
end

local function found() return best_node ~= nil or #ties > 0 end

-- Band 0 (unrestricted nodes): the pair index orders the shards by their lowest free score, a
-- lower bound of what each offers, so the walk ends at the first shard that cannot beat the
-- best found: one shard, unless this job tried the nodes at its head.
local function walk_index()
  local offset = 0
  while true do
    local entries = redis.call('ZRANGEBYSCORE', index_key, '-inf', '(1', 'WITHSCORES',
      'LIMIT', offset, k)
    if offset == 0 and #entries == 0 then exclude('pool_full') end
    for j = 1, #entries, 2 do
      local shard_id, floor = entries[j], tonumber(entries[j + 1])
      if best_score ~= nil and (floor > best_score
          or (floor == best_score and (policy == 'pack' or #ties >= k))) then
        return
      end
      if shard_id ~= preferred then scan_shard(shard_id, '-inf', 1) end
    end
    if #entries < 2 * k then return end
    offset = offset + k
  end
end

if not best_node then
  if preferred then scan_shard(preferred, '-inf', 1) end
  if not found() then walk_index() end
end

-- No unrestricted node free: the bands this job may take (private nodes of its tenant, nodes
-- cooling down only services it does not need, or whose cool-downs have all ended), lowest
-- first, each over every shard of the pair. Only then does the cost count the shards.
if not found() and not best_node then
  local flat = redis.call('HGETALL', prefix .. 'bands')
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  local needs = {}
  for _, svc in ipairs(services) do needs[svc] = true end
  local bands = {}
  for field, class in pairs(h) do
    local b = string.match(field, '^b:(%d+)$')
    if b then
      b = tonumber(b)
      local ok = true
      if class ~= '*' then
        local bar = string.find(class, '|', 1, true)
        local owner, cooled = string.sub(class, 1, bar - 1), string.sub(class, bar + 1)
        if owner ~= '' and (tenant == '' or owner ~= '@' .. tenant) then ok = false end
        if ok and tonumber(h['u:' .. b] or '0') > now then
          for svc in string.gmatch(cooled, '[^,]+') do
            if needs[svc] then ok = false end
          end
        end
      end
      if ok then bands[#bands + 1] = b end
    end
  end
  table.sort(bands)
  if #bands > 0 then
    local shards = redis.call('SMEMBERS', pair_key)
    table.sort(shards)
    for _, b in ipairs(bands) do
      local lo, hi = BAND * b, BAND * b + 1
      if preferred then scan_shard(preferred, lo, hi) end
      if not found() then
        for _, shard_id in ipairs(shards) do
          if shard_id ~= preferred then scan_shard(shard_id, lo, hi) end
          if #ties >= k then break end
        end
      end
      if found() then break end
    end
  end
end

if #ties > 0 then
  local pick = ties[spread_hash % #ties + 1]
  best_node, best_shard, best = pick[1], pick[2], pick[3]
end

for _, g in ipairs(gone) do
  -- the node's TTL passed: take it out of the shard with the shard's count (an emptied shard
  -- leaves the index); the sweeper does the rest
  leave_shard(prefix, g[1], g[2])
end
for node_id, _ in pairs(stale) do
  if node_id ~= best_node then refresh_score(prefix, node_id, now) end
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
refresh_score(prefix, best_node)  -- a slot changes hands: its band stands
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
