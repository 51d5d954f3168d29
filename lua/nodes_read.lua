-- nodes_read: read chosen fields of a batch of node records in one call (stats snapshot).
-- Read-only; the caller keeps batches small (a few hundred ids) so Redis is never busy long.
-- An id that is not a node id, or a node key that is not a hash, reads as a missing record,
-- never an error: the ids come from nodes:all, and one corrupt entry must not stop a snapshot.
-- KEYS[1] prefix             lingua:v1:{cell}:
--   built from KEYS[1]: node:<id>
-- ARGV[1] field_names        JSON list of node hash fields to read (at most 32)
-- ARGV[2] node_ids           JSON list of strings (at most 1000): node ids
-- Returns: one list of field values per node id, in order (a missing field or record: nil)
--          {-1, field} invalid input
--@include common

local prefix = KEYS[1]
local ok_f, fields = pcall(cjson.decode, ARGV[1])
if not ok_f or type(fields) ~= 'table' or #fields < 1 or #fields > 32 then
  return {-1, 'field_names'}
end
for _, f in ipairs(fields) do
  if type(f) ~= 'string' or not string.match(f, '^[a-z_:]+$') then return {-1, 'field_names'} end
end
local ok_n, ids = pcall(cjson.decode, ARGV[2])
if not ok_n or type(ids) ~= 'table' or #ids > 1000 then return {-1, 'node_ids'} end
for _, id in ipairs(ids) do
  if type(id) ~= 'string' then return {-1, 'node_ids'} end
end
local missing = {}
for i = 1, #fields do missing[i] = false end
local out = {}
for i, id in ipairs(ids) do
  -- pcall: a node key of another type answers an error table instead of raising
  local r = is_node_id(id) and redis.pcall('HMGET', prefix .. 'node:' .. id, unpack(fields))
  if not r or r.err then r = missing end
  out[i] = r
end
return out
