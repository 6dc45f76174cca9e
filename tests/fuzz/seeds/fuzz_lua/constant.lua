--[[ constant.lua: LR schedule returning config.lr at every step.

Convention (see cosine.lua for the full text): the script defines a global
`function lr(step, total_steps)` (step 0-based) returning one finite number; the core sets the
global table `config` (config.lr = the learning rate) before calling it.
]]

function lr(step, total_steps)
  local v = type(config) == "table" and config.lr or nil
  if type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge then
    error("constant schedule: config.lr must be a finite number, got " .. tostring(v))
  end
  return v
end
