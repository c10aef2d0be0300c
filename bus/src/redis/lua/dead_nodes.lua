-- The nodes whose lease ran out but whose entries may still need reaping: scored in the past,
-- but no further back than the reaping window.
-- KEYS[1] = the nodes sorted set; ARGV[1] = reaping window in ms.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], string.format('%d', now - tonumber(ARGV[1])),
  string.format('%d', now))
