-- Counts one node in or out of a channel's occupancy (the set of nodes that hold subscribers
-- of it) and, on the first node in or the last node out, queues channel_occupied or
-- channel_vacated on the webhook stream in the same step. Idempotent per node: a node added
-- twice, or removed by itself and by a reaper, changes nothing the second time.
-- KEYS[1] = the channel's occupancy set, KEYS[2] = the webhook stream.
-- ARGV[1] = node id, ARGV[2] = '1' (in) or '0' (out), ARGV[3] = app id ('' when the app
-- wants no webhook of this kind), ARGV[4] = the webhook event's JSON, ARGV[5] = the webhook
-- stream's most entries.
-- On a cluster KEYS[2] is not given (the stream lives on another shard): the script then
-- returns 2 when the event is due, and the caller queues it.
-- Returns 1 when the webhook event was queued, else 0.
local changed
if ARGV[2] == '1' then
  changed = redis.call('SADD', KEYS[1], ARGV[1]) == 1 and redis.call('SCARD', KEYS[1]) == 1
else
  changed = redis.call('SREM', KEYS[1], ARGV[1]) == 1 and redis.call('SCARD', KEYS[1]) == 0
end
if changed and ARGV[3] ~= '' then
  if #KEYS < 2 then
    return 2
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'a', ARGV[3], 'e', ARGV[4])
  return 1
end
return 0
