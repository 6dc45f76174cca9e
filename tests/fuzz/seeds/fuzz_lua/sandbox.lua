-- exercises the sandbox wrappers
local ok, e = pcall(load, "return 1 + 1", "x", "b")
local f = load(function() return nil end)
local g = load("\27Lua")
local t = setmetatable({}, {__index = function(t, k) return k * 2 end})
local ok2 = pcall(setmetatable, {}, {__gc = print})
collectgarbage("count"); collectgarbage("step", 1); pcall(collectgarbage, "stop")
local s = string.rep("ab", 1000):gsub("a", "%%0"):upper()
xpcall(function() error({}) end, function(m) return tostring(m) end)
print = nil
function lr(step, total) return config.lr * (1 - step / math.max(1, total)) + 0 * t[3] end
