-- Removes one connection from a channel's presence and, when it was there and the namespace
-- announces leaves, publishes the leave on the channel's pub/sub stream in the same step.
-- Gated on the entry being there, so a leave is announced exactly once even when several
-- nodes reap the same dead node, or a node and a reaper remove the same entry.
-- When the channel's Pusher app wants member webhooks, a member_removed event goes to the
-- webhook stream in the same step, only when it was the user's last connection there.
-- KEYS[1] = the channel's presence hash, KEYS[2] = the webhook stream.
-- ARGV[1] = client id, ARGV[2] = the leave envelope ('' when not announced),
-- ARGV[3] = pub/sub channel, ARGV[4] = app id ('' when no webhook), ARGV[5] = the webhook
-- event's JSON, ARGV[6] = the member's user, ARGV[7] = the webhook stream's most entries.
-- On a cluster KEYS[2] is not given (the stream lives on another shard): the script then
-- returns 2 (removed, the webhook is due) and the caller queues the event.
-- Returns 1 when the entry was removed, 0 when it was not there.
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return 0
end
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[3], ARGV[2])
end
if ARGV[4] ~= '' then
  for _, stored in ipairs(redis.call('HVALS', KEYS[1])) do
    local ok, entry = pcall(cjson.decode, stored)
    if ok and entry['user'] == ARGV[6] then
      return 1
    end
  end
  if #KEYS < 2 then
    return 2
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'a', ARGV[4], 'e', ARGV[5])
end
return 1
