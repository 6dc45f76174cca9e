-- must fail: string.dump is removed (no way to produce bytecode)
local b = string.dump(function() return 1 end)
zp.log(#b)
