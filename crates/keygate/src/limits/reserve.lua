-- keygate: reserve rate-limit units for one request (or a prefetch), over every limit of it at
-- once, atomically. The rule is keygate_core::limits (a sliding window of two weighted fixed
-- windows); the node computes the previous window's weight and this script only sums, compares
-- and adds. Every product stays below 2^53, so Lua's doubles are exact.
--
-- KEYS[2i-1], KEYS[2i]: limit i's hash for the current and the previous fixed window,
--   {node id: units this node reserved in that window}.
-- ARGV[1]: this node's id. ARGV[2]: n, the number of limits. Then 8 values per limit:
--   limit   units per window
--   weight  the previous window's weight now, in 1/65536
--   need    units that must fit for the request to go through (0 for a prefetch)
--   want    units to reserve if they fit, need included (the rest becomes the node's lease)
--   add     units the node already spent on its own (while Redis was away): counted regardless
--   expect  the least this node's field must hold; less means Redis lost it (a restart)
--   ttl     milliseconds the current window's hash must live (to the end of the next window)
--   release units of this node's unused lease in the previous window, given back first
-- Reply: {ok, lost, then per limit: current sum, previous sum, granted, fits}. ok = 1 when
-- every limit had room for its need; then each limit grants between need and want, at most
-- half of what is free divided among the nodes seen, so that leases shrink to exactly the
-- request's cost near the limit. ok = 0: nothing is reserved (but `add` is still counted).
local S = 65536
local MAX = 68719476736 -- 2^36: counts saturate here, as in keygate_core
local node = ARGV[1]
local n = tonumber(ARGV[2])
local ok, lost = 1, 0
local seen = {}
for i = 1, n do
  local a = 2 + (i - 1) * 8
  local limit, weight, need = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local add, expect, release = tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6]), tonumber(ARGV[a + 8])
  if release > 0 then
    local held = tonumber(redis.call('HGET', KEYS[2 * i], node) or '0')
    if held > 0 then
      redis.call('HINCRBY', KEYS[2 * i], node, string.format('%d', -math.min(held, release)))
    end
  end
  local current, previous, nodes, mine = 0, 0, 0, 0
  local fields = redis.call('HGETALL', KEYS[2 * i - 1])
  for j = 1, #fields, 2 do
    local units = tonumber(fields[j + 1])
    current = current + units
    nodes = nodes + 1
    if fields[j] == node then mine = units end
  end
  for _, units in ipairs(redis.call('HVALS', KEYS[2 * i])) do
    previous = previous + tonumber(units)
  end
  if mine < expect then lost = 1 end
  if mine == 0 then nodes = nodes + 1 end
  current = current + add
  local used = math.min(previous, MAX) * weight + math.min(current, MAX) * S
  local fits = used + need * S <= limit * S
  if not fits then ok = 0 end
  seen[i] = {current, previous, math.floor((limit * S - used) / S), nodes, fits}
end
local reply = {ok, lost}
for i = 1, n do
  local a = 2 + (i - 1) * 8
  local need, want, add, ttl = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]), ARGV[a + 7]
  local current, previous, free, nodes, fits = seen[i][1], seen[i][2], seen[i][3], seen[i][4], seen[i][5]
  local granted = 0
  if ok == 1 then
    granted = math.min(math.max(need, math.min(want, math.floor(free / (2 * nodes)))), free)
  end
  if granted + add > 0 then
    redis.call('HINCRBY', KEYS[2 * i - 1], node, string.format('%d', granted + add))
    redis.call('PEXPIRE', KEYS[2 * i - 1], ttl)
  end
  reply[#reply + 1] = current + granted
  reply[#reply + 1] = previous
  reply[#reply + 1] = granted
  reply[#reply + 1] = fits and 1 or 0
end
return reply
