-- Connection fencing: which of a node's connections may write its record.
-- Needs nothing.
--
-- A connection id names one WebSocket, so once another connection replaced it (a register
-- or a heartbeat on a newer connection) it never owns the node again. The record keeps the
-- last RETIRED_MAX replaced ids in 'retired_conns' (a JSON list, newest last); a heartbeat
-- or a registration from one of them is stale, and a drop from one names a connection that
-- is not the current one, so it changes nothing either.
local RETIRED_MAX = 8

-- A stored list of connection ids (JSON); {} when absent or unreadable.
local function conn_list(raw)
  if not raw then return {} end
  local ok, list = pcall(cjson.decode, raw)
  if not ok or type(list) ~= 'table' then return {} end
  return list
end

local function retired_list(node_key)
  return conn_list(redis.call('HGET', node_key, 'retired_conns'))
end

-- Was conn_id replaced by a newer connection of this node?
local function is_retired(node_key, conn_id)
  for _, c in ipairs(retired_list(node_key)) do
    if c == conn_id then return true end
  end
  return false
end

-- The 'retired_conns' value once old_conn is replaced (the oldest ids fall off).
local function retired_with(node_key, old_conn)
  local list = retired_list(node_key)
  list[#list + 1] = old_conn
  while #list > RETIRED_MAX do table.remove(list, 1) end
  return cjson.encode(list)
end

-- A record removed with its connection (graceful close, expiry) would take its list of
-- replaced connections with it, and a beat of one of them still on the bus (beats and events
-- travel on separate queues) could then adopt the node from the registration that follows.
-- So the list outlives the record in node:<id>:retired, with the connection that ended, for
-- ENDED_CONNS_TTL_MS (far longer than a beat waits on the bus: the sweeper stops waiting for
-- beats in transit after LINGUA_NODE_EXPIRY_HOLD_MAX_MS, 30 s by default); the next
-- registration that creates the record takes the list over.
local ENDED_CONNS_TTL_MS = 600000

-- Keep node_key's replaced connections (or, with the record gone, those tomb_key holds), and
-- ended_conn (when not '') among them, in tomb_key; a replay writes nothing.
local function remember_ended(node_key, tomb_key, ended_conn)
  local raw = redis.call('GET', tomb_key)
  local list
  if redis.call('EXISTS', node_key) == 1 then
    list = retired_list(node_key)
  else
    list = conn_list(raw)
  end
  if ended_conn and ended_conn ~= '' then
    local seen = false
    for _, c in ipairs(list) do
      if c == ended_conn then seen = true end
    end
    if not seen then list[#list + 1] = ended_conn end
  end
  if #list == 0 then return end
  while #list > RETIRED_MAX do table.remove(list, 1) end
  local encoded = cjson.encode(list)
  if encoded ~= raw then redis.call('SET', tomb_key, encoded, 'PX', ENDED_CONNS_TTL_MS) end
end

-- A registration creating the record: nil when conn_id is one that ended (the registration is
-- stale), else the 'retired_conns' value to start the record with (false: none).
local function inherited_retired(tomb_key, conn_id)
  local raw = redis.call('GET', tomb_key)
  local list = conn_list(raw)
  if #list == 0 then return false end
  for _, c in ipairs(list) do
    if c == conn_id then return nil end
  end
  return raw
end
