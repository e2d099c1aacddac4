#!lua name=shardcast_v1
-- shardcast's Redis Functions (PROTOCOL.md 15.1): a publication with history is
-- numbered, stored and published in one atomic step, so every instance sees the
-- same offset. KEYS[1] is the channel's stream, KEYS[2] its hash (epoch, offset);
-- both carry the channel's pub/sub name as hash tag, so on a cluster they live in
-- the slot of the sharded channel itself. Idempotency keys are KEYS[2]..":idem:"..key,
-- the same slot again.

-- The channel's epoch, created (and the stale stream dropped) when it has none.
local function epoch_of(stream, meta)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    redis.call('DEL', stream)
    local t = redis.call('TIME')
    epoch = t[1] .. t[2]
    redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
  end
  return epoch
end

local function publish(keys, args)
  local stream, meta = keys[1], keys[2]
  local topic, json = args[1], args[2]
  local size, ttl = tonumber(args[3]), tonumber(args[4])
  local origin, idem = args[5] or '', args[6] or ''
  local command = (args[7] == '1') and 'SPUBLISH' or 'PUBLISH'
  if not (size and ttl and size >= 0 and ttl > 0) then
    return redis.error_reply('ERR shardcast_publish: history_size and history_ttl must be numbers, ttl > 0')
  end
  local idem_key = meta .. ':idem:' .. idem
  if idem ~= '' then
    local seen = redis.call('GET', idem_key)
    if seen then
      local offset, epoch = string.match(seen, '^(%d+),(.*)$')
      return {tonumber(offset), epoch, 1}
    end
  end
  local offset, epoch = 0, ''
  if size > 0 then
    epoch = epoch_of(stream, meta)
    offset = redis.call('HINCRBY', meta, 'offset', 1)
    redis.call('XADD', stream, 'MAXLEN', size, offset .. '-0', 'd', json)
    redis.call('EXPIRE', stream, ttl)
    redis.call('EXPIRE', meta, ttl)
    redis.call(command, topic, '^' .. offset .. ',' .. epoch .. ',' .. origin .. ' ' .. json)
  elseif origin ~= '' then
    redis.call(command, topic, '@' .. origin .. ' ' .. json)
  else
    redis.call(command, topic, json)
  end
  if idem ~= '' then
    redis.call('SET', idem_key, offset .. ',' .. epoch, 'EX', ttl)
  end
  return {offset, epoch, 0}
end

local function history(keys, args)
  local stream, meta = keys[1], keys[2]
  local since, limit, ttl = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  if not (since and limit and ttl and ttl > 0) then
    return redis.error_reply('ERR shardcast_history: since, limit and ttl must be numbers')
  end
  local fresh = redis.call('EXISTS', meta) == 0
  local epoch = epoch_of(stream, meta)
  if fresh then
    redis.call('EXPIRE', meta, ttl)
  end
  local top = tonumber(redis.call('HGET', meta, 'offset'))
  local out = {epoch, top}
  if limit > 0 then
    local entries
    if since < 0 then
      entries = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', limit)
      for i = #entries, 1, -1 do
        local id, fields = entries[i][1], entries[i][2]
        table.insert(out, tonumber(string.match(id, '^(%d+)')))
        table.insert(out, fields[2])
      end
    else
      entries = redis.call('XRANGE', stream, '(' .. since .. '-0', '+', 'COUNT', limit)
      for _, entry in ipairs(entries) do
        table.insert(out, tonumber(string.match(entry[1], '^(%d+)')))
        table.insert(out, entry[2][2])
      end
    end
  end
  return out
end

redis.register_function('shardcast_publish', publish)
redis.register_function('shardcast_history', history)
