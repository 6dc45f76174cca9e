-- buffer_before_fill.lua (test input, rejected): stage 1 runs the forward of micro-batch 0
-- before receiving its input into buffer 0.
return function(stages, micro_batches, stage_id, chunks)
  if stage_id == 0 then
    return {LOAD(0), FWD(0, 0, 0), SEND_ACT(0, 0, 0), RECV_GRAD(0, 0, 0), BWD(0, 0, 0),
            REDUCE_GRADS(), STEP()}
  end
  return {LOAD(0), FWD(0, 0, 0), RECV_ACT(0, 0, 0), BWD(0, 0, 0), SEND_GRAD(0, 0, 0),
          REDUCE_GRADS(), STEP()}
end
