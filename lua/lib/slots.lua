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

-- A released job keeps a timer this far ahead, so it is dispatched again (or, with no attempt
-- left, failed) even if the caller dies right after the release.
local RESCUE_MS = 1000

-- Take a job's current attempt back from its node: free its slot, leave the rescue timer.
-- With attempts left the job is 'queued' for the next one; with none it is 'exhausted': it is
-- never dispatched again, only failed (by the caller, or by its timer if the caller died), and
-- a replay of the release answers the same. Returns true when no attempt is left.
local function take_back(prefix, job_id, state, attempt, node_id, node_reg, reason, now,
    max_attempts)
  local job_key = prefix .. 'job:' .. job_id
  release_slot(prefix, job_id, node_id, state, node_reg)
  redis.call('ZADD', prefix .. 'timers', now + RESCUE_MS, job_id)
  local exhausted = attempt >= max_attempts
  redis.call('HSET', job_key, 'state', exhausted and 'exhausted' or 'queued', 'released_at', now,
    'release_reason', reason)
  -- the next attempt may wait for a free slot as long as the first could
  redis.call('HDEL', job_key, 'wait_until')
  return exhausted
end

-- Recount a node's reserved and running slots from the jobs holding a lease on it
-- (node:<id>:jobs): a job counts when its record is live, names this node, was granted by the
-- node's current registration and is assigned (reserved) or acked (running). A member whose
-- job record expired or moved on is dropped from the set. Writes the counts (and the scores)
-- only when they differ. Returns fixed (0/1) and how many members were dropped; nil when the
-- node has no record.
local function recount_slots(prefix, node_id)
  local node_key = prefix .. 'node:' .. node_id
  local jobs_key = node_key .. ':jobs'
  local h = redis.call('HMGET', node_key, 'reserved', 'running', 'capacity')
  if not h[3] then return nil end
  local reserved, running, dropped = 0, 0, 0
  for _, job_id in ipairs(redis.call('SMEMBERS', jobs_key)) do
    local j = redis.call('HMGET', prefix .. 'job:' .. job_id, 'state', 'node_id', 'node_reg')
    if j[2] ~= node_id or (j[1] ~= 'assigned' and j[1] ~= 'acked') then
      redis.call('SREM', jobs_key, job_id)
      dropped = dropped + 1
    elseif same_registration(node_key, j[3]) then
      if j[1] == 'acked' then running = running + 1 else reserved = reserved + 1 end
    end
  end
  if (tonumber(h[1]) or 0) == reserved and (tonumber(h[2]) or 0) == running then
    return 0, dropped
  end
  redis.call('HSET', node_key, 'reserved', reserved, 'running', running)
  refresh_score(prefix, node_id)
  return 1, dropped
end
