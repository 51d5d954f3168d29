-- Validation and string helpers, inlined by the loader where a script says `--@include common`
-- (every script does; the libraries pools, slots and delivery build on it). Validation
-- helpers return nil on bad input so that a script can reject everything before its first
-- write (Redis has no rollback).

-- A node's record outlives its logical expiry (nodes:expiry) by this long. The sweeper decides
-- when a node has expired, and holds a node whose beats may still be on their way while the
-- heartbeat pipeline is behind (node-manager's expiry hold, at most
-- LINGUA_NODE_EXPIRY_HOLD_MAX_MS, which settings keep below this); the record must still be
-- there when its beat lands. Normally the sweeper removes it within a sweep of its expiry.
local NODE_RECORD_GRACE_MS = 60000

-- Integers are bounded to what a double holds exactly (2^53 - 1): beyond it (or inf/nan)
-- a number reaches Redis as '1e+30' / 'inf' and PEXPIRE fails after earlier writes.
local MAX_INT = 9007199254740991
local function is_int(v)
  local n = tonumber(v)
  if n == nil or n ~= n or n ~= math.floor(n) or n > MAX_INT or n < -MAX_INT then return nil end
  return n
end

-- A finite number (no inf/nan), or nil.
local function is_num(v)
  local n = tonumber(v)
  if n == nil or n ~= n or n == math.huge or n == -math.huge then return nil end
  return n
end

local function is_label(v)
  -- lowercase letters, digits, '_', '.', '-'; 1..64 chars; no ':' '{' '}' (key safety)
  return type(v) == 'string' and #v >= 1 and #v <= 64 and string.match(v, '^[a-z0-9][a-z0-9_.-]*$') ~= nil
end

local function is_node_id(v)
  return type(v) == 'string' and #v >= 1 and #v <= 64 and string.match(v, '^[A-Za-z0-9][A-Za-z0-9_.-]*$') ~= nil
end

-- A language code as stored (docs/protocol.md §2.3; lingua_shared.protocol.langs is the
-- same rule): 2-3 letters, then subtags of 2-8 letters or digits joined by '-', at most 35
-- bytes, lowercase ASCII ('yue', 'pt-br', 'zh-hant', 'es-419'). Never '_' ':' '{' '}'.
local function is_lang(v)
  if type(v) ~= 'string' or #v < 2 or #v > 35 then return false end
  local first = true
  for part in string.gmatch(v .. '-', '([^-]*)-') do
    if first then
      if not string.match(part, '^[a-z][a-z][a-z]?$') then return false end
      first = false
    elseif not string.match(part, '^[a-z0-9][a-z0-9]+$') or #part > 8 then
      return false
    end
  end
  return true
end

-- Byte order, as Python's sorted() orders the same ASCII codes: Lua's '<' compares strings
-- with strcoll, and Redis takes LC_COLLATE from its environment ('pt-br' > 'ptb' in en_US).
local function byte_less(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

-- Decode and validate a JSON list of language sets; returns sets sorted in byte order or nil.
local function parse_lang_sets(raw)
  local ok, sets = pcall(cjson.decode, raw)
  if not ok or type(sets) ~= 'table' or #sets < 1 or #sets > 16 then return nil end
  local out = {}
  for _, set in ipairs(sets) do
    if type(set) ~= 'table' or #set < 2 or #set > 8 then return nil end
    local langs = {}
    for _, l in ipairs(set) do
      if not is_lang(l) then return nil end
      langs[#langs + 1] = l
    end
    table.sort(langs, byte_less)
    for i = 2, #langs do if langs[i] == langs[i - 1] then return nil end end
    out[#out + 1] = langs
  end
  return out
end

local function split(s, sep)
  local out = {}
  for part in string.gmatch(s, '([^' .. sep .. ']+)') do out[#out + 1] = part end
  return out
end

-- A pool shard id '<langset>:<region>:<gpu_tier>:<n>' (lingua_shared.keys.parse_shard_id is
-- the same rule): 2 to 8 language codes joined by '_', two labels, a shard number without
-- leading zeros. A read-only script skips anything else rather than build a key from it.
local function is_shard_id(v)
  if type(v) ~= 'string' or #v > 512 then return false end
  local langset, region, gpu, n = string.match(v, '^([^:]*):([^:]*):([^:]*):([^:]*)$')
  if not langset or not is_label(region) or not is_label(gpu) then return false end
  if not string.match(n, '^[0-9]+$') or #n > 9 or (#n > 1 and string.sub(n, 1, 1) == '0') then
    return false
  end
  local count = 0
  for lang in string.gmatch(langset .. '_', '([^_]*)_') do
    if not is_lang(lang) then return false end
    count = count + 1
  end
  return count >= 2 and count <= 8
end

-- A node record's slot counts as the scripts write them (false: absent): capacity a
-- non-negative integer, running and reserved absent or non-negative integers. What
-- pools_summary checks before it sums a member (selection reads nothing else of it).
local floor = math.floor
local function is_count(v)
  local n = tonumber(v)
  return n ~= nil and n >= 0 and n <= MAX_INT and n == floor(n)
end
local function is_node_counts(capacity, running, reserved)
  return is_count(capacity) and (not running or is_count(running))
    and (not reserved or is_count(reserved))
end

-- A node record's fields as register_node_v2 writes them: the slot counts above, region and
-- gpu tier labels, lang_sets a list of language sets. nodes_summary leaves any other record
-- out of its totals, so one corrupt record never stops a snapshot. The text fields are
-- judged once per distinct value in a call (a fleet shares a few of them): decoding every
-- record's lang_sets would make a summary of thousands of records several times slower.
local text_ok = {label = {}, lang_sets = {}}
local function judged(kind, v, check)
  local ok = text_ok[kind][v]
  if ok == nil then
    ok = check(v)
    text_ok[kind][v] = ok
  end
  return ok
end
local function is_lang_sets(v)
  return parse_lang_sets(v) ~= nil
end
local function is_node_record(capacity, running, reserved, region, gpu, lang_sets)
  return is_node_counts(capacity, running, reserved)
    and type(region) == 'string' and type(gpu) == 'string' and type(lang_sets) == 'string'
    and judged('label', region, is_label) and judged('label', gpu, is_label)
    and judged('lang_sets', lang_sets, is_lang_sets)
end
