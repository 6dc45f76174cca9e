-- things that must stay unreachable: io, os, package, debug, require, dofile, loadfile, string.dump
local names = {"io", "os", "package", "debug", "require", "dofile", "loadfile", "loadstring", "coroutine"}
for _, n in ipairs(names) do assert(_G[n] == nil, n) end
assert(string.dump == nil)
assert(getmetatable("").__index == string)
local ok = pcall(load, "\27Lua\84\0")
local f = load(function() local s = "\27Lua" ; return s end)
local r = {}
local co = rawget(_G, "coroutine")
for k, v in pairs(_G) do r[#r + 1] = k end
table.sort(r)
goto done
::done::
do local x <close> = setmetatable({}, {__close = function() end}) end
local u = utf8.char(72, 0x10FFFF) .. utf8.charpattern
for p, c in utf8.codes("héllo") do end
local s = ("%5.2f|%q|%x"):format(1.5, "a\0b", 255)
local m = string.pack and string.pack("i4", 7)
