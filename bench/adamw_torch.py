#!/usr/bin/env python3
"""adamw_torch.py: torch.optim.AdamW on the CPU, timed like bench/adamw_cpu_bench.c.

One fp32 parameter tensor of N elements with an fp32 gradient, lr 1e-3, betas (0.9, 0.999),
eps 1e-8, weight_decay 0.01 (the zp bench's hyper-parameters). Implementations:
  default  foreach=None, fused=None: what torch picks for CPU tensors (printed as "resolved")
  foreach  foreach=True
  fused    fused=True (the vectorised CPU kernel)
  fused-mixed  zp's mixed mode done with torch: bf16 grad -> fp32 grad buffer (copy_), the
           fused step on the fp32 master, fp32 master -> bf16 param (copy_); timed together
Bytes per parameter: param read+write 8, grad 4, exp_avg and exp_avg_sq read+write 16 = 28 B
(same count as zp's fp32 mode). fused-mixed is reported with zp's mixed-mode count (28 B: the
bytes the update needs), although torch moves 2+4 (cast) + 28 + 4+2 (cast back) = 40 B for it. ms = median of ITERS steps after one warm-up step (which
allocates the state); G params/s = N / median; GB/s = 28 N / median / 1e9.
Self-check first: fused and foreach vs default on 100k elements over 3 steps, allclose
(rtol 1e-5, atol 1e-7); exit status 1 if they disagree, 2 on bad arguments.
Output: a line per implementation; --json: one JSON object per line (bench/adamw_bench.sh).
"""
import argparse
import json
import os
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1 << 28)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--impl", default="default,foreach,fused,fused-mixed")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.n < 1 or a.iters < 1 or a.threads < 0:
        print("adamw_torch.py: --n and --iters must be >= 1, --threads >= 0", file=sys.stderr)
        return 2
    impls = [s for s in a.impl.split(",") if s]
    for s in impls:
        if s not in ("default", "foreach", "fused", "fused-mixed"):
            print(f"adamw_torch.py: unknown --impl '{s}' (default, foreach, fused, fused-mixed)", file=sys.stderr)
            return 2
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count() or 0
    hp = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    kw = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}, "fused-mixed": {"fused": True}}

    def resolved(opt):
        # what torch.optim picked for "default" on these tensors
        try:
            from torch.optim.optimizer import _default_to_fused_or_foreach

            p = opt.param_groups[0]["params"]
            fused, foreach = _default_to_fused_or_foreach(p, differentiable=False, use_fused=False)
            return "fused" if fused else "foreach" if foreach else "for-loop (single tensor)"
        except Exception as e:  # private API: report, do not fail
            return f"unknown ({type(e).__name__})"

    # self-check on a small problem
    g = torch.Generator().manual_seed(1)
    p0 = torch.rand(100_000, generator=g) * 2 - 1
    grads = [torch.rand(100_000, generator=g) * 2 - 1 for _ in range(3)]
    res = {}
    for s in (set(impls) - {"fused-mixed"}) | {"default"}:
        p = torch.nn.Parameter(p0.clone())
        opt = torch.optim.AdamW([p], **hp, **kw[s])
        for gr in grads:
            p.grad = gr.clone()
            opt.step()
        res[s] = p.detach()
    bad = [s for s in res if not torch.allclose(res[s], res["default"], rtol=1e-5, atol=1e-7)]
    if bad:
        print(f"adamw_torch.py: {','.join(bad)} disagree with default beyond rtol 1e-5", file=sys.stderr)
        return 1

    if not a.json:
        print(f"adamw_torch.py: torch {torch.__version__}, n={a.n} threads={threads} (cpus available: {nproc})"
              f"{' OVERSUBSCRIBED' if threads > nproc else ''} iters={a.iters}")
    param = torch.nn.Parameter(torch.empty(a.n).uniform_(-1, 1))
    param.grad = torch.empty(a.n).uniform_(-1, 1)
    gbf = pbf = None
    if "fused-mixed" in impls:
        gbf = param.grad.to(torch.bfloat16)
        pbf = torch.empty(a.n, dtype=torch.bfloat16)
    bpp = 28
    for s in impls:
        with torch.no_grad():
            param.uniform_(-1, 1)
        opt = torch.optim.AdamW([param], **hp, **kw[s])
        how = resolved(opt) if s == "default" else s
        mixed = s == "fused-mixed"

        def step():
            if mixed:
                with torch.no_grad():
                    param.grad.copy_(gbf)
                    opt.step()
                    pbf.copy_(param)
            else:
                opt.step()

        step()  # warm-up: state allocation
        ts = []
        for _ in range(a.iters):
            t0 = time.perf_counter()
            step()
            ts.append(time.perf_counter() - t0)
        med, best = statistics.median(ts), min(ts)
        pps, gbs = a.n / med, bpp * a.n / med / 1e9
        if a.json:
            print(json.dumps(dict(impl=f"torch-{s}", mode="mixed" if mixed else "fp32", isa=how, n=a.n, threads=threads, nproc=nproc,
                                  ms=round(med * 1e3, 3), ms_best=round(best * 1e3, 3), params_per_s=pps,
                                  bytes_per_param=bpp, gb_per_s=round(gbs, 2), torch=torch.__version__)))
        else:
            print(f"torch-{s:<11} {med * 1e3:9.2f} ms/step (best {best * 1e3:.2f})  {pps / 1e9:7.3f} G params/s"
                  f"  {gbs:7.2f} GB/s  ({bpp} B/param; {how})")
        sys.stdout.flush()
        del opt
    return 0


if __name__ == "__main__":
    sys.exit(main())
