"""The Lua scripts of the Redis feature state (:mod:`serving.redis_state`): one call records a
batch and reads its histories atomically (``RECORD``), one attaches the decisions (``DECIDE``),
one sets labels (``LABELS``). Values are packed little-endian, as the module's docstring lays
out."""

# KEYS: nc customer keys, nt terminal keys, nt fraud keys, n transaction keys.
# ARGV: nc, nt, n, ttl s, customer cut ms, terminal cut ms, read (0/1),
#       per-tx (customer index, terminal index) as uint16 pairs, customer records (16 B each),
#       terminal records (8 B each), transaction values (time, decision, label: 10 B each),
#       fraud records (16 B each, delta 0 = none), terminal prefix, answer prefix, tx prefix.
# Returns [customer blobs..., terminal blobs..., fraud blobs..., new flags, answers] (blobs and
# answers only with read): the histories as they were before the batch, and (position, first
# answer) pairs for the transactions seen before.
RECORD = """
local nc, nt, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl, ccut, tcut, read = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7] == '1'
local idx, crec, trec, xval, frec = ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local nk = nc + 2 * nt
local blobs = redis.call('MGET', unpack(KEYS, 1, nk))
local function trim(i, width, cut)  -- drop the events no window can reach any more
  local v = blobs[i]
  if not v then blobs[i] = ''; return end
  local m, k = #v / width, 0
  while k < m and struct.unpack('<i8', v, k * width + 1) <= cut do k = k + 1 end
  if k > 0 then
    v = string.sub(v, k * width + 1)
    if #v == 0 then redis.call('DEL', KEYS[i]) else redis.call('SET', KEYS[i], v, 'EX', ttl) end
    blobs[i] = v
  end
end
for i = 1, nc do trim(i, 16, ccut) end
for i = nc + 1, nc + nt do trim(i, 8, tcut) end
for i = nc + nt + 1, nk do trim(i, 16, tcut) end
-- Append the new transactions, grouped per key; a key's TTL is set when it is created and
-- renewed when it is trimmed (both at most a retention apart while the key is in use).
local new, parts, order = {}, {}, {}
local function add(key, rec, width)
  local p = parts[key]
  if not p then p = {width}; parts[key] = p; order[#order + 1] = key end
  p[#p + 1] = rec
end
for i = 1, n do
  local ci, ti = struct.unpack('<HH', idx, (i - 1) * 4 + 1)
  local tkey = KEYS[nc + ti]
  local xv = string.sub(xval, (i - 1) * 10 + 1, i * 10) .. string.sub(tkey, #ARGV[13] + 1)
  if redis.call('SET', KEYS[nk + i], xv, 'NX', 'EX', ttl) then
    new[i] = '1'
    add(KEYS[ci], string.sub(crec, (i - 1) * 16 + 1, i * 16), 16)
    add(tkey, string.sub(trec, (i - 1) * 8 + 1, i * 8), 8)
    local f = string.sub(frec, (i - 1) * 16 + 1, i * 16)
    if struct.unpack('<i8', f, 9) ~= 0 then add(KEYS[nc + nt + ti], f, 16) end
  else
    new[i] = '0'
  end
end
for _, key in ipairs(order) do
  local p = parts[key]
  local rec = table.concat(p, '', 2)
  if redis.call('APPEND', key, rec) == #rec then redis.call('EXPIRE', key, ttl) end
end
if not read then return {table.concat(new)} end
blobs[nk + 1] = table.concat(new)
-- The first answers of the transactions seen before: (position, answer) pairs.
local answers, xlen = {}, #ARGV[15]
for i = 1, n do
  if new[i] == '0' then
    local a = redis.call('GET', ARGV[14] .. string.sub(KEYS[nk + i], xlen + 1))
    if a then answers[#answers + 1] = i; answers[#answers + 1] = a end
  end
end
blobs[nk + 2] = answers
return blobs
"""

# KEYS: transaction keys. ARGV: decisions (int8 each), probabilities (float64 each, or empty),
# model version, ttl s, answer prefix, tx prefix. Sets the decision of each transaction that has
# none yet, and its answer (a re-sent transaction keeps the answer given the first time).
DECIDE = """
local probas, xlen = ARGV[2], #ARGV[6]
for i = 1, #KEYS do
  if redis.call('GETRANGE', KEYS[i], 8, 8) == '\\255' then
    local d = string.sub(ARGV[1], i, i)
    redis.call('SETRANGE', KEYS[i], 8, d)
    if #probas > 0 then
      local a = ARGV[5] .. string.sub(KEYS[i], xlen + 1)
      local p = string.sub(probas, (i - 1) * 8 + 1, i * 8)
      redis.call('SET', a, p .. d .. ARGV[3], 'EX', ARGV[4])
    end
  end
end
return #KEYS
"""

# KEYS: transaction keys. ARGV: labels (int8 each), fraud key prefix, ttl s.
# Returns per transaction 3 bytes: found (0/1), decision, previous label.
LABELS = """
local out = {}
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if not v then
    out[i] = struct.pack('bbb', 0, 0, 0)
  else
    local t, dec, old = struct.unpack('<i8bb', v)
    local label = struct.unpack('b', ARGV[1], i)
    local delta = (label == 1 and 1 or 0) - (old == 1 and 1 or 0)
    if delta ~= 0 then
      local fkey = ARGV[2] .. string.sub(v, 11)
      redis.call('APPEND', fkey, struct.pack('<i8i8', t, delta))
      redis.call('EXPIRE', fkey, ARGV[3])
    end
    redis.call('SETRANGE', KEYS[i], 9, struct.pack('b', label))
    out[i] = struct.pack('bbb', 1, dec, old)
  end
end
return table.concat(out)
"""
