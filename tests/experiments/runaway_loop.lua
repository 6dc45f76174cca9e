-- must fail: the instruction budget stops a runaway loop (run with --max-instructions 1e6)
local n = 0
while true do n = n + 1 end
