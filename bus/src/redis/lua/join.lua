-- Adds one connection to a channel's presence and, when it is new and the namespace
-- announces joins, publishes the join on the channel's pub/sub stream in the same step.
-- Gated on the entry being new, so a join is announced once however often it is written
-- (a node rewriting its entries after losing its lease announces only what was gone).
-- KEYS[1] = the channel's presence hash.
-- ARGV[1] = client id, ARGV[2] = entry, ARGV[3] = most entries the channel may hold,
-- ARGV[4] = the join envelope ('' when joins are not announced), ARGV[5] = pub/sub channel.
-- Returns 1 (added), 0 (already there, refreshed) or -1 (the channel is full).
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 0
end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[5], ARGV[4])
end
return 1
