-- Slots a job holds on a node, and which registration of the node granted them.
-- Needs common and pools.

-- Does the node's record belong to the registration that granted a job's slot? A node that
-- left (graceful, or its TTL passed) and registered again starts its counters from zero: the
-- jobs of its earlier registration hold no slot in them. node_reg is the node's reg_id when
-- the slot was granted (its registered_at for a record written before reg_id existed; '' for
-- a job reserved before either was recorded).
local function registration_of(reg_id, registered_at)
  return reg_id or registered_at or ''
end

local function same_registration(node_key, node_reg)
  local h = redis.call('HMGET', node_key, 'reg_id', 'registered_at')
  if not h[2] then return false end
  return not node_reg or node_reg == '' or registration_of(h[1], h[2]) == node_reg
end

-- Give back the slot a job holds on its node: reserved (assigned) or running (acked).
local function release_slot(prefix, job_id, node_id, state, node_reg)
  if not node_id or node_id == '' then return end
  local node_key = prefix .. 'node:' .. node_id
  redis.call('SREM', node_key .. ':jobs', job_id)
  if not same_registration(node_key, node_reg) then return end
  local field = (state == 'acked') and 'running' or 'reserved'
  if tonumber(redis.call('HGET', node_key, field) or '0') > 0 then
    redis.call('HINCRBY', node_key, field, -1)
  end
  refresh_score(prefix, node_id)
end
