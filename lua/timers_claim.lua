-- timers_claim: claim the job timers that are due, so one dispatcher replica handles each.
-- A claim pushes the timer forward by claim_ms instead of removing it: if the claimer dies,
-- the timer comes due again and another replica takes it.
-- KEYS[1] timers             lingua:v1:{cell}:timers (zset job id -> due ms)
-- ARGV[1] now_ms
-- ARGV[2] claim_ms           how long a claim holds before the timer fires again
-- ARGV[3] limit              at most this many timers per call
-- Returns: {job_id1, job_id2, ...} claimed (maybe empty); a negative code is never returned;
--          {-1, field} invalid input, nothing written
--@include common

local now = is_int(ARGV[1])
local claim = is_int(ARGV[2])
local limit = is_int(ARGV[3])
if not now or now <= 0 then return {-1, 'now_ms'} end
if not claim or claim <= 0 then return {-1, 'claim_ms'} end
if not limit or limit < 1 then return {-1, 'limit'} end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
for _, job_id in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', now + claim, job_id) end
return due
