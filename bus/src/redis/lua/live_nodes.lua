-- The live nodes: scored after now. Members whose lease ran out longer ago than the reaping
-- window are dropped (a node that died with nobody left to reap it); more recently dead ones
-- stay until a surviving node has reaped their presence entries and removed them.
-- KEYS[1] = the nodes sorted set; ARGV[1] = reaping window in ms.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf',
  string.format('(%d', now - tonumber(ARGV[1])))
return redis.call('ZRANGEBYSCORE', KEYS[1], string.format('(%d', now), '+inf')
