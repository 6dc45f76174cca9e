-- memory cap: grow until refused, then recover and keep going
local t, s = {}, "x"
local ok, e = pcall(function() while true do s = s .. #s; t[#t + 0] = s end end)
t, s = nil, nil
collectgarbage()
local ok2 = pcall(string.re0)
local big = {}
for i = 1, 1e5 do big[i] = i end
function lr(step, total) return #big + step end
