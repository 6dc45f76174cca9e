--[[ zb_h1.lua: ZB-H1 from "Zero Bubble Pipeline Parallelism" (Qi et al. 2023).

The backward is split into BWD_INPUT (B: the gradient of the stage's input, which the
previous stage waits for) and BWD_WEIGHT (W: the weight gradients, which nobody waits for).
The order is 1F1B's with B in place of the full backward, and the W passes delayed: stage s
skips W in its first s steady iterations, so every stage has p micro-batches in flight at
most (1F1B's peak on stage 0), and the delayed W's fill the cool-down, where 1F1B idles.

Bubble with op times tF, tB, tW: (p-1)(tF + tB - tW) per stage instead of 1F1B's
(p-1)(tF + tB + tW); with tF = tB = tW a third of 1F1B's ((p-1)/(3m) of the ideal compute
time).

Only the compute order is written here; pipeline.with_comms (the core's schedule prelude,
docs/schedules.md) adds LOAD, the sends and receives, the buffers, REDUCE_GRADS and STEP.
]]

local function compute(s, p, m, v)
  local warmup = math.min(p - 1 - s, m)
  local order, next_w = {}, 0
  local function w()
    order[#order + 1] = BWD_WEIGHT(next_w)
    next_w = next_w + 1
  end
  for mb = 0, warmup - 1 do order[#order + 1] = FWD(mb) end
  for i = 0, m - warmup - 1 do
    order[#order + 1] = FWD(warmup + i)
    order[#order + 1] = BWD_INPUT(i)
    if i >= s then w() end           -- the first s W's wait for the cool-down
  end
  for mb = m - warmup, m - 1 do
    order[#order + 1] = BWD_INPUT(mb)
    w()
  end
  while next_w < m do w() end
  return order
end

function schedule(stages, micro_batches, stage_id, chunks)
  if chunks ~= 1 then
    error(("zb_h1 has no virtual stages: chunks must be 1, got %d"):format(chunks))
  end
  return pipeline.with_comms(stages, micro_batches, 1, stage_id, compute)
end
