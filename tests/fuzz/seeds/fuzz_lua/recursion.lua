-- deep Lua recursion: the stack grows until Lua or the memory cap stops it
local function rec(n) return rec(n + 1) + 1 end
local ok, e = pcall(rec, 1)
function lr(s, t) return s / t end
