-- instruction budget: a script's own pcall/xpcall cannot swallow the limit
local n = 0
for i = 1, 3 do
  local ok, e = pcall(function() while true do n = n + 1 end end)
  if not ok then n = -1 end
end
xpcall(function() while true do end end, function(m) while true do end end)
