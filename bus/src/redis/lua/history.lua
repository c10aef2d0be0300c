-- Reads in small chunks and stops at the byte bound, so that a channel holding thousands of
-- large entries costs one page of work, not a copy of its whole history.
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset')
local out = {meta[1] or '', meta[2] or '0', '0'}
if not meta[1] then
  return out
end
local limit = tonumber(ARGV[2])
local budget = tonumber(ARGV[4])
local reverse = ARGV[3] == '1'
local low = '-'
if ARGV[1] ~= '' then
  low = string.format('%d-0', tonumber(ARGV[1]) + 1)
end
local high = '+'
local taken, bytes = 0, 0
while true do
  local count = 16
  if limit > 0 and limit - taken < count then
    count = limit - taken
  end
  if count <= 0 then
    break
  end
  local entries
  if reverse then
    entries = redis.call('XREVRANGE', KEYS[2], high, low, 'COUNT', count)
  else
    entries = redis.call('XRANGE', KEYS[2], low, high, 'COUNT', count)
  end
  for _, entry in ipairs(entries) do
    local data = entry[2][2]
    if taken > 0 and bytes + #data > budget then
      out[3] = '1'
      return out
    end
    out[#out + 1] = data
    taken = taken + 1
    bytes = bytes + #data
    -- Exclusive bounds ('(' + id) continue after the last entry read.
    if reverse then
      high = '(' .. entry[1]
    else
      low = '(' .. entry[1]
    end
  end
  if #entries < count then
    break
  end
end
return out
