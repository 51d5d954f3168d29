-- job_create: create a job for a request key exactly once (J2), keeping its audio.
-- KEYS[1] prefix             lingua:v1:{cell}:
--   built from KEYS[1]: idem:<request_key>, job:<job_id>, job:<job_id>:audio, timers
-- ARGV[1] request_key        idempotency key: request id, or "<session_id>:<utterance_index>"
-- ARGV[2] job_id             id to use if the job is new
-- ARGV[3] now_ms
-- ARGV[4] ttl_ms             lifetime of the job record, its audio and the request key
-- ARGV[5] fields             JSON object of job fields (session_id, utterance_index, langs, ...)
-- ARGV[6] audio              the utterance audio (base64), kept for redispatch
-- A new job gets a timer RESCUE_MS (1 s) ahead, replaced by its lease once it is reserved.
-- Returns: {1, job_id} created; {2, existing_job_id} duplicate request, nothing written;
--          {-1, field} invalid input, nothing written
--@include common

local RESCUE_MS = 1000

local prefix = KEYS[1]
local request_key, job_id = ARGV[1], ARGV[2]
local now = is_int(ARGV[3])
local ttl = is_int(ARGV[4])
if request_key == '' or #request_key > 256 then return {-1, 'request_key'} end
if not is_node_id(job_id) then return {-1, 'job_id'} end
if not now or now <= 0 then return {-1, 'now_ms'} end
if not ttl or ttl <= 0 then return {-1, 'ttl_ms'} end
local ok, fields = pcall(cjson.decode, ARGV[5])
if not ok or type(fields) ~= 'table' then return {-1, 'fields'} end
if type(fields.session_id) ~= 'string' or fields.session_id == '' then return {-1, 'fields'} end
local index = is_int(fields.utterance_index)
if not index or index < 0 then return {-1, 'fields'} end

local idem_key = prefix .. 'idem:' .. request_key
local existing = redis.call('GET', idem_key)
if existing then return {2, existing} end

local job_key = prefix .. 'job:' .. job_id
redis.call('SET', idem_key, job_id, 'PX', ttl)
local flat = {}
for k, v in pairs(fields) do
  if type(v) == 'table' then v = cjson.encode(v) end
  flat[#flat + 1] = k
  flat[#flat + 1] = tostring(v)
end
redis.call('HSET', job_key, 'job_id', job_id, 'request_key', request_key, 'state', 'queued',
  'attempt', 0, 'created_at', now, 'tried', '', unpack(flat))
redis.call('PEXPIRE', job_key, ttl)
redis.call('SET', job_key .. ':audio', ARGV[6], 'PX', ttl)
-- a safety timer: if the creator dies before selecting, the timers dispatch the job
redis.call('ZADD', prefix .. 'timers', now + RESCUE_MS, job_id)
return {1, job_id}
