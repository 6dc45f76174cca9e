-- lr() returning the wrong things
local calls = 0
function lr(step, total)
  calls = calls + 1
  if calls == 1 then return 0/0 end
  if calls == 2 then return 1/0, 2 end
  if calls == 3 then return "0.1" end
  if calls == 4 then return end
  if calls == 5 then error(setmetatable({}, {__tostring = function() return "obj" end})) end
  return math.huge * 0 + step
end
