-- error objects of every kind, __tostring that fails, C-level recursion
local mt = {__tostring = function(e) error("no string for you") end}
local e = setmetatable({}, mt)
local ok, m = pcall(error, e)
local function cs(n) return tostring(setmetatable({}, {__tostring = function() return cs(n + 1) end})) end
pcall(cs, 1)
pcall(string.format, "%d", "x")
pcall(table.concat, {1, {}, 3})
pcall(load, function() return 1 end)
pcall(load, function() return {} end)
local env = {}
local f = load("x = 1; return _ENV", "=env", "bt", env)
local g = load(string.dump and "" or "return 2")
pcall(setmetatable, setmetatable({}, {__metatable = false}), {})
pcall(collectgarbage, "generational"); pcall(collectgarbage, "incremental"); pcall(collectgarbage, "setpause", 1)
error(e)
