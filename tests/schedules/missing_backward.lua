-- missing_backward.lua (test input, rejected): GPipe where the first stage receives the
-- gradient of micro-batch 1 but forgets its backward.
function schedule(stages, micro_batches, stage_id, chunks)
  local first, last = stage_id == 0, stage_id == stages - 1
  local l = {}
  for mb = 0, micro_batches - 1 do
    if first or last then l[#l + 1] = LOAD(mb) end
    if not first then l[#l + 1] = RECV_ACT(mb) end
    l[#l + 1] = FWD(mb)
    if not last then l[#l + 1] = SEND_ACT(mb) end
  end
  for mb = 0, micro_batches - 1 do
    if not last then l[#l + 1] = RECV_GRAD(mb) end
    if not (first and mb == 1) then l[#l + 1] = BWD(mb) end
    if not first then l[#l + 1] = SEND_GRAD(mb) end
  end
  l[#l + 1] = REDUCE_GRADS()
  l[#l + 1] = STEP()
  return l
end
