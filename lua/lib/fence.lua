-- Connection fencing: which of a node's connections may write its record.
-- Needs nothing.
--
-- A connection id names one WebSocket, so once another connection replaced it (a register
-- or a heartbeat on a newer connection) it never owns the node again. The record keeps the
-- last RETIRED_MAX replaced ids in 'retired_conns' (a JSON list, newest last); a heartbeat
-- or a registration from one of them is stale, and a drop from one names a connection that
-- is not the current one, so it changes nothing either.
local RETIRED_MAX = 8

local function retired_list(node_key)
  local raw = redis.call('HGET', node_key, 'retired_conns')
  if not raw then return {} end
  local ok, list = pcall(cjson.decode, raw)
  if not ok or type(list) ~= 'table' then return {} end
  return list
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
