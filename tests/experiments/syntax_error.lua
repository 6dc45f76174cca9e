-- must fail with "syntax_error.lua:4:" (a Lua syntax error)
local x = 1

local y = = 2
