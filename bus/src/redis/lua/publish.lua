local function varint(n)
  local out = {}
  while n >= 128 do
    out[#out + 1] = string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  out[#out + 1] = string.char(n)
  return table.concat(out)
end

if ARGV[7] ~= '0' then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local sep = string.find(seen, ':', 1, true)
    return {tonumber(string.sub(seen, 1, sep - 1)), string.sub(seen, sep + 1), 1}
  end
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[2])
  epoch = ARGV[2]
  -- A new epoch starts a new history: nothing of an older life may be replayed in it.
  redis.call('DEL', KEYS[2])
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
-- field 1, wire type 0 (varint): tag 0x08; field 2, wire type 2 (bytes): tag 0x12.
local envelope = ARGV[3] .. '\8' .. varint(offset) .. '\18' .. varint(#epoch) .. epoch
local size = tonumber(ARGV[4])
if size > 0 then
  local id = string.format('%d-0', offset)
  local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', size, id, 'e', envelope)
  if type(added) == 'table' and added.err then
    -- History ahead of the position (edited or restored out of step): it cannot be trusted.
    redis.call('DEL', KEYS[2])
    redis.call('XADD', KEYS[2], 'MAXLEN', size, id, 'e', envelope)
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PUBLISH', ARGV[1], envelope)
if ARGV[7] ~= '0' then
  redis.call('SET', KEYS[3], string.format('%d', offset) .. ':' .. epoch, 'PX', ARGV[7])
end
return {offset, epoch, 0}
