--[[ cosine.lua: LR schedule, linear warm-up then cosine decay to a floor.

Convention shared by every script in scripts/schedules:
  * The script defines a global `function lr(step, total_steps)` returning one finite number.
    `step` is 0-based (0 .. total_steps-1 are the optimizer steps of the run); `total_steps`
    is the number of optimizer steps in the run.
  * Before calling `lr`, the core sets a global table `config` holding the schedule's
    parameters (numbers only):
      config.lr            peak learning rate (required)
      config.warmup_steps  linear warm-up length in steps (default 0)
      config.min_lr_ratio  floor as a fraction of config.lr (default 0.1)
  * The script runs in the zp Lua sandbox (base without dofile/loadfile, table, string, math,
    utf8) with memory and instruction limits; it must not keep state between calls.

This schedule (as in llm.c / nanoGPT):
  step <  warmup_steps:  lr = peak * (step + 1) / warmup_steps      (never 0 on step 0)
  step >= warmup_steps:  p  = (step - warmup_steps) / max(1, total_steps - warmup_steps),
                         clamped to [0, 1]
                         lr = min + 0.5 * (1 + cos(pi * p)) * (peak - min),  min = peak * ratio
So lr(warmup_steps) = peak and lr(total_steps) = min (the last step, total_steps-1, is just
above min).
]]

local function param(name, default)
  local v = config and config[name]
  if v == nil then v = default end
  if type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge then
    error(string.format("cosine schedule: config.%s must be a finite number, got %s", name,
      tostring(v)))
  end
  return v
end

function lr(step, total_steps)
  if type(config) ~= "table" then
    error("cosine schedule: the core must set the global table `config` before calling lr()")
  end
  local peak = param("lr", nil)
  local warmup = param("warmup_steps", 0)
  local ratio = param("min_lr_ratio", 0.1)
  local min_lr = peak * ratio
  if step < warmup then
    return peak * (step + 1) / warmup
  end
  local p = (step - warmup) / math.max(1, total_steps - warmup)
  if p < 0 then p = 0 elseif p > 1 then p = 1 end
  return min_lr + 0.5 * (1 + math.cos(math.pi * p)) * (peak - min_lr)
end
