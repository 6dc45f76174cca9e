-- unmatched.lua (test input, rejected): stage 1 never sends the input gradient of
-- micro-batch 1, so stage 0's RECV_GRAD of it has no sender.
return function(stages, micro_batches, stage_id, chunks)
  if stage_id == 0 then
    return {LOAD(0), FWD(0), SEND_ACT(0), LOAD(1), FWD(1), SEND_ACT(1),
            RECV_GRAD(0), BWD(0), RECV_GRAD(1), BWD(1), REDUCE_GRADS(), STEP()}
  end
  return {LOAD(0), RECV_ACT(0), FWD(0), LOAD(1), RECV_ACT(1), FWD(1),
          BWD(0), SEND_GRAD(0), BWD(1), REDUCE_GRADS(), STEP()}
end
