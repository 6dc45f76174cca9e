--[[ gpipe.lua: GPipe (Huang et al. 2019): every micro-batch's forward, then every backward.

Pipeline schedule convention (docs/schedules.md): the script defines
schedule(stages, micro_batches, stage_id, chunks) returning the ordered instruction list of
one device stage; the core calls it for every stage and validates all lists together before
any compute. This one is written out by hand, with its sends and receives, as the worked
example of the docs.

Memory: stage s holds the activations of all M micro-batches at the end of the forward
phase (M buffers). Bubble: (p-1)/m of the ideal compute time, i.e. (p-1)/(m+p-1) of the
wall time, for any op times with equal stages.
]]

function schedule(stages, micro_batches, stage_id, chunks)
  if chunks ~= 1 then
    error(("gpipe has no virtual stages: chunks must be 1, got %d (use interleaved_1f1b)"):format(chunks))
  end
  local first, last = stage_id == 0, stage_id == stages - 1
  local list = {}
  local function emit(ins) list[#list + 1] = ins end

  -- forward phase: buffer mb holds micro-batch mb until its backward is done
  for mb = 0, micro_batches - 1 do
    if first or last then emit(LOAD(mb)) end       -- tokens (first stage), targets (last)
    if not first then emit(RECV_ACT(mb, 0, mb)) end
    emit(FWD(mb, 0, mb))
    if not last then emit(SEND_ACT(mb, 0, mb)) end
  end
  -- backward phase, in the same micro-batch order
  for mb = 0, micro_batches - 1 do
    if not last then emit(RECV_GRAD(mb, 0, mb)) end
    emit(BWD(mb, 0, mb))
    if not first then emit(SEND_GRAD(mb, 0, mb)) end
  end
  emit(REDUCE_GRADS())
  emit(STEP())
  return list
end
