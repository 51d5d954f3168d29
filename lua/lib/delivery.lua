-- How a session's outcomes reach its client (arrival or ordered), exactly once per index.
-- Needs common.

-- Take a session's outcomes (a flat list idx1, payload1, ...) and return those now due to its
-- client (flat list idx, payload, ... in the order they leave) and the set of indices taken. An
-- index answered before is skipped: each index is answered exactly once. The session's
-- `delivery` decides what is due:
--   'arrival'  every outcome at once (lingua's first-come-first-served); `next_deliver` is the
--              lowest index not yet answered and `:sent` the answered indices above it;
--   otherwise  ('ordered') strictly in index order from `next_deliver`: an outcome waits in
--              `:results` behind a hole, and a hole holds later outcomes until `gaps` says.
local function deliver_outcomes(prefix, session_id, items, now, gap_ms, session_ttl_ms)
  local session_key = prefix .. 'session:' .. session_id
  local results_key = session_key .. ':results'
  local h = redis.call('HMGET', session_key, 'next_deliver', 'delivery')
  local next_idx = tonumber(h[1] or '0')
  local out, taken = {}, {}
  if h[2] == 'arrival' then
    local sent_key = session_key .. ':sent'
    for i = 1, #items, 2 do
      local idx = items[i]
      if idx >= next_idx and redis.call('SADD', sent_key, idx) == 1 then
        out[#out + 1] = idx
        out[#out + 1] = items[i + 1]
        taken[idx] = true
      end
    end
    if #out == 0 then return out, taken end  -- all answered before: nothing written
    while redis.call('SREM', sent_key, next_idx) == 1 do next_idx = next_idx + 1 end
    redis.call('HSET', session_key, 'next_deliver', next_idx)
    redis.call('PEXPIRE', session_key, session_ttl_ms)
    if redis.call('EXISTS', sent_key) == 1 then redis.call('PEXPIRE', sent_key, session_ttl_ms) end
    return out, taken
  end
  local any = false
  for i = 1, #items, 2 do
    local idx = items[i]
    if idx >= next_idx and redis.call('HSETNX', results_key, idx, items[i + 1]) == 1 then
      taken[idx] = true
      any = true
    end
  end
  if not any then return out, taken end  -- all answered before: nothing written
  while true do
    local p = redis.call('HGET', results_key, next_idx)
    if not p then break end
    out[#out + 1] = next_idx
    out[#out + 1] = p
    redis.call('HDEL', results_key, next_idx)
    next_idx = next_idx + 1
  end
  redis.call('HSET', session_key, 'next_deliver', next_idx)
  redis.call('PEXPIRE', session_key, session_ttl_ms)
  if redis.call('HLEN', results_key) > 0 then
    redis.call('PEXPIRE', results_key, session_ttl_ms)
    -- a new hole (the run advanced) gets a fresh deadline; an old one keeps its own
    if #out > 0 then
      redis.call('ZADD', prefix .. 'gaps', now + gap_ms, session_id)
    else
      redis.call('ZADD', prefix .. 'gaps', 'NX', now + gap_ms, session_id)
    end
  else
    redis.call('ZREM', prefix .. 'gaps', session_id)
  end
  return out, taken
end
