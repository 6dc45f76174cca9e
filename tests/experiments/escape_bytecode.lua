-- must fail: load accepts text only; a precompiled chunk is refused (here a bytecode header)
local chunk = "\27Lua\x54\0\x19\x93\r\n\x1a\n\4\8\8\x78\x56\0\0\0\0\0\0\0\0\0\0\0\x28\x77\x40"
local f = assert(load(chunk, "bytes", "b"))
f()
