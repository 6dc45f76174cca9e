-- must fail: the sandbox has no io library (tests/integration/experiment.sh)
local f = io.open(zp.args.target, "w")
f:write("escaped\n")
