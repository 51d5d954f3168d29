-- One node's heartbeat: liveness, load, pool membership (heartbeat_with_pool_assign.lua's
-- body, shared with heartbeat_batch.lua, which applies many in one call). Needs common,
-- pools and fence.
-- argv: node_id, conn_id, gateway_id, now_ms, ttl_ms, running_jobs, cpu_percent,
-- gpu_percent, mem_percent, max_shard_size, status, lang_sets, services (strings, as
-- heartbeat_with_pool_assign's ARGV). Returns that script's reply.

local function apply_heartbeat(node_key, pools_key, expiry_key, connected_key, prefix, argv)
  local node_id, conn_id, gateway_id = argv[1], argv[2], argv[3]
  local now = is_int(argv[4])
  local ttl_arg = is_int(argv[5])
  local reported = {argv[6], argv[7], argv[8], argv[9]}
  local max_shard = is_int(argv[10])

  if not is_node_id(node_id) then return {-1, 'node_id'} end
  if conn_id == '' or #conn_id > 128 then return {-1, 'conn_id'} end
  if gateway_id == '' or #gateway_id > 128 then return {-1, 'gateway_id'} end
  if not now or now <= 0 then return {-1, 'now_ms'} end
  if not ttl_arg or ttl_arg < 0 then return {-1, 'ttl_ms'} end
  local reported_names = {'running_jobs', 'cpu_percent', 'gpu_percent', 'mem_percent'}
  for i = 1, 4 do
    if is_num(reported[i]) == nil then return {-1, reported_names[i]} end
  end
  if not max_shard or max_shard < 1 then return {-1, 'max_shard_size'} end
  local status_arg = argv[11]
  if status_arg ~= '' and status_arg ~= 'ready' and status_arg ~= 'draining'
      and status_arg ~= 'degraded' then
    return {-1, 'status'}
  end
  local new_sets = nil
  if argv[12] ~= '' then
    new_sets = parse_lang_sets(argv[12])
    if not new_sets then return {-1, 'lang_sets'} end
  end
  if argv[13] ~= '' then
    local ok_s, svc = pcall(cjson.decode, argv[13])
    if not ok_s or type(svc) ~= 'table' then return {-1, 'services'} end
  end

  local h = redis.call('HMGET', node_key, 'conn_id', 'connected', 'ttl_ms', 'lang_sets', 'region',
    'gpu_tier', 'pool_sig', 'running', 'reserved', 'capacity', 'status', 'last_heartbeat_ts',
    'band', 'public')
  if not h[4] then return {-2, ''} end
  if h[1] == conn_id and h[2] == '0' then return {-3, ''} end
  -- another connection: a newer one adopts the node (the one it names is replaced); a late beat
  -- of a connection already replaced must not take the node back from the live one
  local replaced = nil
  if h[1] and h[1] ~= conn_id then
    if is_retired(node_key, conn_id) then return {-3, ''} end
    replaced = h[1]
  end

  local ttl = ttl_arg
  if ttl == 0 then ttl = tonumber(h[3]) or 45000 end
  local last = tonumber(h[12]) or 0
  if now < last then now = last end  -- replays and clock skew never move time backwards

  -- one HSET per beat: this is the hottest write of the system
  local fields = {'last_heartbeat_ts', now, 'connected', '1', 'conn_id', conn_id,
    'gateway_id', gateway_id, 'ttl_ms', ttl}
  local reported_fields = {'reported_running', 'cpu_percent', 'gpu_percent', 'mem_percent'}
  for i = 1, 4 do
    if tonumber(reported[i]) >= 0 then
      fields[#fields + 1] = reported_fields[i]
      fields[#fields + 1] = reported[i]
    end
  end
  if new_sets then
    local encoded = cjson.encode(new_sets)
    if encoded ~= h[4] then
      h[4] = encoded  -- a new signature below: the pools follow the new language sets
      fields[#fields + 1] = 'lang_sets'
      fields[#fields + 1] = encoded
    end
  end
  if argv[13] ~= '' then
    fields[#fields + 1] = 'services'
    fields[#fields + 1] = argv[13]
  end
  if replaced then
    fields[#fields + 1] = 'retired_conns'
    fields[#fields + 1] = retired_with(node_key, replaced)
  end
  local status = h[11]
  if status_arg ~= '' then
    status = status_arg
    fields[#fields + 1] = 'status'
    fields[#fields + 1] = status
  end
  redis.call('HSET', node_key, unpack(fields))
  redis.call('PEXPIRE', node_key, ttl + NODE_RECORD_GRACE_MS)
  redis.call('ZADD', expiry_key, now + ttl, node_id)
  redis.call('ZADD', connected_key, now, node_id)

  -- its score from the record just written: load, band (restrictions at now), connection.
  -- A public node scored in band 0 had no cool-down in force then, and none can have begun
  -- since (service_cooldown scores the node itself): its band is still 0 and the score needs
  -- only what this beat read and wrote. Else the whole record is read (node_score): its
  -- cool-downs may have ended, which moves it back to band 0. (The whole-record read was
  -- ~30 % of Redis's time per beat.)
  local score
  if (not h[13] or h[13] == '0') and h[14] ~= '0' and h[10] then
    score = load_score(h[8], h[9], h[10], '1', status)  -- connected: just written
  else
    score = node_score(prefix, node_id, now)
  end
  local region, gpu = h[5], h[6]
  local sig = h[4] .. '|' .. region .. '|' .. gpu
  local changed = 0

  if sig ~= h[7] then
    -- Membership: one shard per language set in this node's (region, gpu tier) group.
    local sets = cjson.decode(h[4])
    local wanted = {}  -- group id -> true
    for _, langs in ipairs(sets) do
      wanted[table.concat(langs, '_') .. ':' .. region .. ':' .. gpu] = true
    end
    local have = {}    -- group id -> shard id
    for _, shard_id in ipairs(redis.call('SMEMBERS', pools_key)) do
      local p = split(shard_id, ':')
      local group = p[1] .. ':' .. p[2] .. ':' .. p[3]
      if wanted[group] and not have[group]
          and redis.call('ZSCORE', prefix .. 'pool:' .. shard_id, node_id) then
        have[group] = shard_id
      else
        leave_shard(prefix, node_id, shard_id)
        redis.call('SREM', pools_key, shard_id)
        changed = 1
      end
    end
    for group, _ in pairs(wanted) do
      if not have[group] then
        local group_key = prefix .. 'poolgroup:' .. group
        local counts = redis.call('HGETALL', group_key)
        local used, pick = {}, nil
        for i = 1, #counts, 2 do
          local shard, count = tonumber(counts[i]), tonumber(counts[i + 1])
          used[shard] = true
          if count < max_shard and (pick == nil or shard < pick) then pick = shard end
        end
        if pick == nil then
          pick = 0
          while used[pick] do pick = pick + 1 end
        end
        local shard_id = group .. ':' .. pick
        local pool_key = prefix .. 'pool:' .. shard_id
        redis.call('ZADD', pool_key, score, node_id)
        redis.call('HINCRBY', group_key, pick, 1)
        redis.call('SADD', pools_key, shard_id)
        if redis.call('SADD', prefix .. 'pools:index', shard_id) == 1 then
          local langs = split(split(group, ':')[1], '_')
          for _, a in ipairs(langs) do
            for _, b in ipairs(langs) do
              if a ~= b then redis.call('SADD', prefix .. 'pair:' .. a .. ':' .. b, shard_id) end
            end
          end
        end
        changed = 1
      end
    end
    redis.call('HSET', node_key, 'pool_sig', sig)
  end

  -- Refresh the load score in every shard (XX: never re-add a shard a sweep just removed), and
  -- the pair index of each.
  for _, shard_id in ipairs(redis.call('SMEMBERS', pools_key)) do
    set_score(prefix, shard_id, node_id, score)
  end
  return {1, changed}
end
