-- Adds one connection to a channel's presence and, when it is new and the namespace
-- announces joins, publishes the join on the channel's pub/sub stream in the same step.
-- Gated on the entry being new, so a join is announced once however often it is written
-- (a node rewriting its entries after losing its lease announces only what was gone).
-- When the channel's Pusher app wants member webhooks, a member_added event goes to the
-- webhook stream in the same step, only for the user's first connection in the channel.
-- KEYS[1] = the channel's presence hash, KEYS[2] = the webhook stream.
-- ARGV[1] = client id, ARGV[2] = entry, ARGV[3] = most entries the channel may hold,
-- ARGV[4] = the join envelope ('' when joins are not announced), ARGV[5] = pub/sub channel,
-- ARGV[6] = app id ('' when no webhook), ARGV[7] = the webhook event's JSON,
-- ARGV[8] = the member's user, ARGV[9] = the webhook stream's most entries.
-- On a cluster KEYS[2] is not given (the stream lives on another shard): the script then
-- returns 2 (added, the webhook is due) and the caller queues the event.
-- Returns 1 (added), 0 (already there, refreshed) or -1 (the channel is full).
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 0
end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return -1
end
local first = true
if ARGV[6] ~= '' then
  for _, stored in ipairs(redis.call('HVALS', KEYS[1])) do
    local ok, entry = pcall(cjson.decode, stored)
    if ok and entry['user'] == ARGV[8] then
      first = false
      break
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[5], ARGV[4])
end
if ARGV[6] ~= '' and first then
  if #KEYS < 2 then
    return 2
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[9], '*', 'a', ARGV[6], 'e', ARGV[7])
end
return 1
