-- shardcast occupancy (PROTOCOL.md 20.7), part of the shardcast_v1 library: which
-- instances have subscribers on a channel, so that the change from none to some
-- (occupied) and back (vacated) is seen by exactly one instance.
--   KEYS[1] <prefix>occupancy:{<topic>}   set of the instances with subscribers
-- A join or leave costs one FCALL: SADD or SREM, then SCARD. Redis deletes the set
-- when it empties, so a vacated channel leaves nothing behind.

-- ARGV: node, "1" (it has subscribers now) or "0" (it has none any more).
-- Returns 1 when that occupied or vacated the channel, else 0.
local function occupancy(keys, args)
  local set, node = keys[1], args[1]
  if args[2] == '1' then
    if redis.call('SADD', set, node) == 1 and redis.call('SCARD', set) == 1 then
      return 1
    end
    return 0
  end
  if redis.call('SREM', set, node) == 1 and redis.call('SCARD', set) == 0 then
    return 1
  end
  return 0
end

redis.register_function('shardcast_occupancy', occupancy)
