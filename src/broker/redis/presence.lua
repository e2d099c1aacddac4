-- shardcast presence (PROTOCOL.md 20.4), part of the shardcast_v1 library.
-- A channel's members are users: a user is a member while any of its connections,
-- on any instance, is. Per channel, all keys hash-tagged to the channel's slot:
--   KEYS[1] <prefix>presence:{<topic>}:users   hash user -> instances holding it
--   KEYS[2] <prefix>presence:{<topic>}:info    hash user -> user_info JSON
--   KEYS[3] <prefix>presence:{<topic>}:node:<node>  hash user -> connections there
-- No hash is rewritten whole by every instance: each instance changes its own
-- node hash, and the shared users hash only on a user's first or last instance.
--
-- What a join costs: one FCALL running HINCRBY on the node hash; on the user's
-- first connection on this instance also HINCRBY on the users hash; on its first
-- instance also HSET of the info and one PUBLISH (member_added). A leave mirrors it.
-- The announcement travels on the channel's own pub/sub topic (no extra
-- subscription), as `%+<origin> <user>\t<info>` or `%-<origin> <user>`.

local function announce(topic, sharded, payload)
  redis.call(sharded and 'SPUBLISH' or 'PUBLISH', topic, payload)
end

-- ARGV: topic, user, info JSON, origin, sharded ("1"/"0"), ttl seconds.
-- Returns 1 when the user became a member (first connection anywhere), else 0.
local function join(keys, args)
  local users, info, node = keys[1], keys[2], keys[3]
  local topic, user, data, origin = args[1], args[2], args[3], args[4]
  local sharded, ttl = args[5] == '1', tonumber(args[6])
  local here = redis.call('HINCRBY', node, user, 1)
  redis.call('EXPIRE', node, ttl)
  if here ~= 1 then
    return 0
  end
  local instances = redis.call('HINCRBY', users, user, 1)
  if instances ~= 1 then
    return 0
  end
  redis.call('HSET', info, user, data)
  announce(topic, sharded, '%+' .. origin .. ' ' .. user .. '\t' .. data)
  return 1
end

-- Removes one of `user`'s instances from the channel; announces when it was the last.
local function drop_instance(users, info, topic, sharded, origin, user)
  local instances = redis.call('HINCRBY', users, user, -1)
  if instances > 0 then
    return 0
  end
  redis.call('HDEL', users, user)
  redis.call('HDEL', info, user)
  announce(topic, sharded, '%-' .. origin .. ' ' .. user)
  return 1
end

-- ARGV: topic, user, origin, sharded. Returns 1 when the user stopped being a member.
local function leave(keys, args)
  local users, info, node = keys[1], keys[2], keys[3]
  local topic, user, origin, sharded = args[1], args[2], args[3], args[4] == '1'
  local here = redis.call('HINCRBY', node, user, -1)
  if here > 0 then
    return 0
  end
  redis.call('HDEL', node, user)
  return drop_instance(users, info, topic, sharded, origin, user)
end

-- An instance is gone: its node hash's users leave (announced with no origin, so
-- every instance tells its subscribers). ARGV: topic, sharded. Returns the users
-- that stopped being members.
local function forget(keys, args)
  local users, info, node = keys[1], keys[2], keys[3]
  local topic, sharded = args[1], args[2] == '1'
  local gone = {}
  for _, user in ipairs(redis.call('HKEYS', node)) do
    if drop_instance(users, info, topic, sharded, '', user) == 1 then
      gone[#gone + 1] = user
    end
  end
  redis.call('DEL', node)
  return gone
end

-- ARGV: limit. Returns [user, info, user, info, ...], at most `limit` members.
local function members(keys, args)
  local info, limit = keys[2], tonumber(args[1])
  local out = {}
  local cursor = '0'
  repeat
    local page = redis.call('HSCAN', info, cursor, 'COUNT', 100)
    cursor = page[1]
    for i = 1, #page[2], 2 do
      if #out >= 2 * limit then
        return out
      end
      table.insert(out, page[2][i])
      table.insert(out, page[2][i + 1])
    end
  until cursor == '0'
  return out
end

redis.register_function('shardcast_presence_join', join)
redis.register_function('shardcast_presence_leave', leave)
redis.register_function('shardcast_presence_forget', forget)
redis.register_function{function_name = 'shardcast_presence_members', callback = members, flags = {'no-writes'}}
