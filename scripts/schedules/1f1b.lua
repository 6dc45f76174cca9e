--[[ 1f1b.lua: one-forward-one-backward (PipeDream-Flush, Narayanan et al. 2021; Megatron's
default). Stage s runs min(p-1-s, m) warm-up forwards, then alternates one forward and one
backward, then drains the remaining backwards.

Same bubble as GPipe ((p-1)/m of the ideal compute time, (p-1)/(m+p-1) of the wall time)
but stage s holds at most p-s micro-batches' activations instead of m.

Written by hand with its sends and receives. With rendezvous sends two neighbours must post
their transfers in the same order. In the steady phase stage s+1 finishes a backward and
would send its gradient down while stage s, having finished a forward, sends its activation
up: both would wait. So every stage receives the next micro-batch's activation (RECV_ACT)
before it sends the gradient of the backward it just did (SEND_GRAD), matching its lower
neighbour's order: SEND_ACT, then RECV_GRAD.
]]

function schedule(stages, micro_batches, stage_id, chunks)
  if chunks ~= 1 then
    error(("1f1b has no virtual stages: chunks must be 1, got %d (use interleaved_1f1b)"):format(chunks))
  end
  local p, m, s = stages, micro_batches, stage_id
  local first, last = s == 0, s == p - 1
  local list = {}
  local function emit(ins) list[#list + 1] = ins end

  -- Buffers: micro-batch mb uses buffer mb % nbuf. Stage s has at most p - s micro-batches
  -- between forward and backward; above stage 0 one more buffer is needed because the next
  -- activation arrives (RECV_ACT) before the finished micro-batch's gradient leaves
  -- (SEND_GRAD), and a buffer is free only after that send.
  local nbuf = first and p or p - s + 1
  local function buf(mb) return mb % nbuf end

  local function recv_fwd(mb)     -- everything up to the forward of mb, except the send
    if first or last then emit(LOAD(mb)) end
    if not first then emit(RECV_ACT(mb, 0, buf(mb))) end
  end
  local function fwd(mb)
    emit(FWD(mb, 0, buf(mb)))
    if not last then emit(SEND_ACT(mb, 0, buf(mb))) end
  end
  local function bwd(mb)          -- the backward of mb, without its gradient send
    if not last then emit(RECV_GRAD(mb, 0, buf(mb))) end
    emit(BWD(mb, 0, buf(mb)))
  end
  local function send_grad(mb)
    if not first then emit(SEND_GRAD(mb, 0, buf(mb))) end
  end

  local warmup = math.min(p - 1 - s, m)
  for mb = 0, warmup - 1 do recv_fwd(mb); fwd(mb) end
  local steady = m - warmup
  if steady > 0 then recv_fwd(warmup) end
  for i = 0, steady - 1 do
    fwd(warmup + i)
    bwd(i)
    if i + 1 < steady then recv_fwd(warmup + i + 1) end   -- receive before sending down
    send_grad(i)
  end
  for mb = steady, m - 1 do bwd(mb); send_grad(mb) end
  emit(REDUCE_GRADS())
  emit(STEP())
  return list
end
