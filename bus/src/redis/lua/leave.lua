-- Removes one connection from a channel's presence and, when it was there and the namespace
-- announces leaves, publishes the leave on the channel's pub/sub stream in the same step.
-- Gated on the entry being there, so a leave is announced exactly once even when several
-- nodes reap the same dead node, or a node and a reaper remove the same entry.
-- KEYS[1] = the channel's presence hash.
-- ARGV[1] = client id, ARGV[2] = the leave envelope ('' when not announced),
-- ARGV[3] = pub/sub channel.
-- Returns 1 when the entry was removed, 0 when it was not there.
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return 0
end
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[3], ARGV[2])
end
return 1
