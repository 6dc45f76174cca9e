-- deadlock.lua (test input, rejected): 1F1B written naively: every stage sends its gradient
-- right after its backward. In the steady phase stage 1 sends its gradient down while stage 0,
-- having finished a forward, sends its activation up; with rendezvous sends both wait forever.
-- scripts/schedules/1f1b.lua receives the next activation first.
function schedule(stages, micro_batches, stage_id, chunks)
  local p, m, s = stages, micro_batches, stage_id
  local first, last = s == 0, s == p - 1
  local l = {}
  local function f(mb)
    if first or last then l[#l + 1] = LOAD(mb) end
    if not first then l[#l + 1] = RECV_ACT(mb) end
    l[#l + 1] = FWD(mb)
    if not last then l[#l + 1] = SEND_ACT(mb) end
  end
  local function b(mb)
    if not last then l[#l + 1] = RECV_GRAD(mb) end
    l[#l + 1] = BWD(mb)
    if not first then l[#l + 1] = SEND_GRAD(mb) end
  end
  local warmup = math.min(p - 1 - s, m)
  for mb = 0, warmup - 1 do f(mb) end
  for i = 0, m - warmup - 1 do f(warmup + i); b(i) end
  for mb = m - warmup, m - 1 do b(mb) end
  l[#l + 1] = REDUCE_GRADS()
  l[#l + 1] = STEP()
  return l
end
