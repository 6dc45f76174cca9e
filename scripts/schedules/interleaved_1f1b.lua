--[[ interleaved_1f1b.lua: interleaved 1F1B with virtual stages (Narayanan et al. 2021,
Megatron-LM's interleaved schedule).

Each device holds `chunks` (v) non-contiguous slices of the model: virtual stage
k = chunk * p + stage, so the last device's chunk c feeds device 0's chunk c + 1. Micro-batches
go through the chunks in groups of p: the device runs forwards in the order
  (group 0: mb 0..p-1 on chunk 0, then chunk 1, ..., chunk v-1), (group 1: mb p..2p-1 ...), ...
and backwards in the same order with the chunks reversed. Warm-up on stage s is
(p - s - 1) * 2 + (v - 1) * p forwards (all of them when m = p), then one forward / one
backward, then the remaining backwards.

Bubble: (p-1)/(v*m) of the ideal compute time ((p-1)/(v*m + p-1) of the wall time), v times
smaller than 1F1B, for v times as many point-to-point transfers. Requires m to be a multiple
of p (as Megatron-LM does), and p >= 2.

Only the compute order is written here; pipeline.with_comms (the core's schedule prelude,
docs/schedules.md) adds LOAD, the sends and receives in one global order, the buffers,
REDUCE_GRADS and STEP.
]]

local function compute(s, p, m, v)
  local total = m * v
  local group = p * v
  local function fwd_of(k)     -- k-th forward on this device -> micro-batch, chunk
    return (k // group) * p + k % p, (k % group) // p
  end
  local function bwd_of(k)     -- k-th backward: same order, chunks reversed
    return (k // group) * p + k % p, v - 1 - (k % group) // p
  end
  local warmup = (p - s - 1) * 2 + (v - 1) * p
  if m == p or warmup > total then warmup = total end
  local order = {}
  for k = 0, warmup - 1 do
    local mb, c = fwd_of(k)
    order[#order + 1] = FWD(mb, c)
  end
  for i = 0, total - warmup - 1 do
    local mb, c = fwd_of(warmup + i)
    order[#order + 1] = FWD(mb, c)
    mb, c = bwd_of(i)
    order[#order + 1] = BWD(mb, c)
  end
  for k = total - warmup, total - 1 do
    local mb, c = bwd_of(k)
    order[#order + 1] = BWD(mb, c)
  end
  return order
end

function schedule(stages, micro_batches, stage_id, chunks)
  if stages < 2 then
    error(("interleaved_1f1b needs at least 2 stages, got %d"):format(stages))
  end
  if micro_batches % stages ~= 0 then
    error(("interleaved_1f1b needs micro_batches to be a multiple of stages: %d micro-batches, %d stages "
      .. "(try %d or %d)"):format(micro_batches, stages, micro_batches // stages * stages,
      (micro_batches // stages + 1) * stages))
  end
  return pipeline.with_comms(stages, micro_batches, chunks, stage_id, compute)
end
