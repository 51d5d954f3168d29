-- Validation and string helpers, inlined by the loader where a script says `--@include common`
-- (every script does; the libraries pools, slots and delivery build on it). Validation
-- helpers return nil on bad input so that a script can reject everything before its first
-- write (Redis has no rollback).

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

-- Decode and validate a JSON list of language sets; returns sorted sets or nil.
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
    table.sort(langs)
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
