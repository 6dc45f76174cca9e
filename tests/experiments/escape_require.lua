-- must fail: require (and package) are not available
local osl = require("os")
osl.execute("touch " .. zp.args.target)
