-- How a session's outcomes reach its client (arrival or ordered), exactly once per index.
-- Needs common.

-- An outcome due to the client stays in the session's outbox (`:outbox`, index -> message)
-- until a gateway has written it to the client (`outbox_ack`): a publish lost with a crashed
-- dispatcher or gateway is published again (`outbox_claim`), or replayed to the client when it
-- resumes the session elsewhere. `outbox` indexes the sessions holding such outcomes, scored by
-- when the oldest of them was (last) published; NX keeps that oldest time.
local function outbox_put(prefix, session_id, out, now, session_ttl_ms)
  if #out == 0 then return end
  local box = prefix .. 'session:' .. session_id .. ':outbox'
  redis.call('HSET', box, unpack(out))
  redis.call('PEXPIRE', box, session_ttl_ms)
  redis.call('ZADD', prefix .. 'outbox', 'NX', now, session_id)
end

-- The entries of a session's outbox among `indices` (a list), as a flat idx, payload list.
local function outbox_get(prefix, session_id, indices)
  local out = {}
  if #indices == 0 then return out end
  local box = prefix .. 'session:' .. session_id .. ':outbox'
  local got = redis.call('HMGET', box, unpack(indices))
  for i, p in ipairs(got) do
    if p then
      out[#out + 1] = tonumber(indices[i])
      out[#out + 1] = p
    end
  end
  return out
end

-- Take a session's outcomes (a flat list idx1, payload1, ...) and return those now due to its
-- client (flat list idx, payload, ... in the order they leave) and the set of indices taken;
-- what is due is also put in the session's outbox. An index answered before is skipped: each
-- index is answered exactly once. The session's `delivery` decides what is due:
--   'arrival'  every outcome at once (lingua's first-come-first-served); `next_deliver` is the
--              lowest index not yet answered and `:sent` the answered indices above it;
--   otherwise  ('ordered') strictly in index order from `next_deliver`: an outcome waits in
--              `:results` behind a hole (`:waiting` says since when), and a hole holds later
--              outcomes until `gaps` says: its deadline runs from when the oldest outcome it
--              holds became ready, so consecutive holes never add up their timeouts.
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
    outbox_put(prefix, session_id, out, now, session_ttl_ms)
    return out, taken
  end
  local waiting_key = session_key .. ':waiting'
  local any = false
  for i = 1, #items, 2 do
    local idx = items[i]
    if idx >= next_idx and redis.call('HSETNX', results_key, idx, items[i + 1]) == 1 then
      redis.call('ZADD', waiting_key, now, idx)
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
    redis.call('ZREM', waiting_key, next_idx)
    next_idx = next_idx + 1
  end
  redis.call('HSET', session_key, 'next_deliver', next_idx)
  redis.call('PEXPIRE', session_key, session_ttl_ms)
  if redis.call('HLEN', results_key) > 0 then
    redis.call('PEXPIRE', results_key, session_ttl_ms)
    redis.call('PEXPIRE', waiting_key, session_ttl_ms)
    -- the hole's deadline runs from when the oldest outcome it holds became ready
    local oldest = redis.call('ZRANGE', waiting_key, 0, 0, 'WITHSCORES')
    redis.call('ZADD', prefix .. 'gaps', tonumber(oldest[2] or now) + gap_ms, session_id)
  else
    redis.call('ZREM', prefix .. 'gaps', session_id)
    redis.call('DEL', waiting_key)
  end
  outbox_put(prefix, session_id, out, now, session_ttl_ms)
  return out, taken
end
