-- overwrite.lua (test input, rejected): GPipe with one buffer per stage: micro-batch 1's
-- activation is received into buffer 0 while micro-batch 0 still needs it for its backward.
function schedule(stages, micro_batches, stage_id, chunks)
  local first, last = stage_id == 0, stage_id == stages - 1
  local l = {}
  for mb = 0, micro_batches - 1 do
    if first or last then l[#l + 1] = LOAD(mb) end
    if not first then l[#l + 1] = RECV_ACT(mb, 0, 0) end
    l[#l + 1] = FWD(mb, 0, 0)
    if not last then l[#l + 1] = SEND_ACT(mb, 0, 0) end
  end
  for mb = 0, micro_batches - 1 do
    if not last then l[#l + 1] = RECV_GRAD(mb, 0, 0) end
    l[#l + 1] = BWD(mb, 0, 0)
    if not first then l[#l + 1] = SEND_GRAD(mb, 0, 0) end
  end
  l[#l + 1] = REDUCE_GRADS()
  l[#l + 1] = STEP()
  return l
end
