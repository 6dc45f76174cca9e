#!/usr/bin/env python3
"""torch_parity.py: zp against plain PyTorch on the exact same GPT-2 weights and tokens.

Reads the reference dump of tests/gpu/check_model (manifest.json, weights_f32.bin,
inputs/targets_i32.bin, grads_<run>.bin), builds the same GPT-2 in PyTorch (the architecture of
../shared/peers/torch_gpt2.py: learned positions, LayerNorm eps 1e-5, tanh GELU, tied wte as the
head; wte keeps zp's padded rows, the loss uses the V real logit columns) and reports:
  (a) PyTorch bf16 vs PyTorch fp32, per gradient tensor (rel-L2): this MEASURED error sets the
      tolerance for zp's bf16 runs: tol = max(TOL_FACTOR * err_torch_bf16, TOL_FLOOR);
  (b) every fp32 zp run (zp CPU) vs PyTorch fp32: must agree to TOL_FP32;
  (c) every bf16 zp run (zp CUDA) vs PyTorch fp32 within the measured tolerance;
  (d) with --train-shard: 10 AdamW steps on the shard's first batches (no shuffle) in PyTorch
      fp32, and in PyTorch bf16 (bf16 params/grads, fp32 master + AdamW, as zp), compared with
      zp's per-step losses from metrics.jsonl files (--train-metrics LABEL=PATH, LABEL ending in
      _fp32 or _bf16). fp32 runs must match the PyTorch fp32 losses to TRAIN_TOL_FP32 (relative);
      bf16 runs within max(TOL_FACTOR * max_step |L_torch_bf16 - L_torch_fp32|/L, TRAIN_TOL_FLOOR).
PyTorch "bf16" here is NOT autocast: the weights are cast to bf16 (round to nearest even, as zp's
bf16 PARAM = bf16(master)) and every activation is bf16, as on zp's CUDA backend; only the loss
(log-softmax over the logits, cast to fp32) runs in fp32 inside the cross-entropy. TF32 is off.
AdamW is written out to match zp's (core/backend_cpu.c cpu_adamw): m, v in fp32, bias
corrections 1 - beta^t, p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p), decay only on tensors
the manifest marks (the 2-D weights: wte, wpe, linear weights), no clipping, constant lr; it is
checked once against torch.optim.AdamW on random data.

Run:   python3 tests/gpu/torch_parity.py --ref $OUT/model_ref [--device auto|cuda|cpu]
         [--train-shard S.bin --train-metrics cuda_bf16=runs/a/metrics.jsonl ...]
       --make-shard PATH writes the structured token shard the training comparison uses.
Exit status: 0 all passed, 1 a check failed, 2 harness error (missing files, bad manifest).
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

TOL_FACTOR = 2.0        # zp bf16 may be this many times further from fp32 than PyTorch bf16 is
TOL_FLOOR = 1e-3        # ... but never less than this (rel-L2)
TOL_FP32 = 1e-5         # zp fp32 vs PyTorch fp32 (rel-L2 of grads; measured ~1e-6 on CPU)
TOL_FP32_LOSS = 1e-5    # relative, fp32 loss
TRAIN_TOL_FP32 = 1e-5   # relative per-step loss, zp fp32 training vs PyTorch fp32 (measured ~2e-7 on CPU)
TRAIN_TOL_FLOOR = 1e-3  # relative per-step loss floor for bf16 training
SHARD_MAGIC, SHARD_VERSION = 20240520, 1


def die(msg):
    print(f"torch_parity: harness error: {msg}", file=sys.stderr)
    sys.exit(2)


def rel_l2(x, ref):
    x = x.double()
    ref = ref.double()
    if not torch.isfinite(x).all():
        return float("nan")
    rn = ref.norm().item()
    dn = (x - ref).norm().item()
    return dn / rn if rn > 0 else dn


# ------------------------------------------------------------------------------------ data

def write_shard(path, ntok, seed=1234, V=50257, K=2048, fan=8):
    """llm.c layout: 256 x int32 header (magic, version, ntok), then uint16 tokens. Tokens are
    learnable: a first-order chain over K of the V ids, each with `fan` successors, so a GPT-2
    trained on it for a few steps moves its loss clearly (10.9 -> a few units lower)."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(V, size=K, replace=False).astype(np.int64)
    succ = rng.integers(0, K, size=(K, fan))
    state = np.empty(ntok, dtype=np.int64)
    s = int(rng.integers(0, K))
    choice = rng.integers(0, fan, size=ntok)
    for i in range(ntok):
        state[i] = s
        s = int(succ[s, choice[i]])
    toks = ids[state].astype(np.uint16)
    hdr = np.zeros(256, dtype="<i4")
    hdr[0], hdr[1], hdr[2] = SHARD_MAGIC, SHARD_VERSION, ntok
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(hdr.tobytes())
        f.write(toks.astype("<u2").tobytes())
    os.replace(tmp, path)


def read_shard(path):
    with open(path, "rb") as f:
        hdr = np.frombuffer(f.read(1024), dtype="<i4")
        if hdr[0] != SHARD_MAGIC or hdr[1] != SHARD_VERSION:
            die(f"{path}: not an llm.c shard (magic {hdr[0]}, version {hdr[1]})")
        toks = np.frombuffer(f.read(), dtype="<u2")
    if len(toks) != hdr[2]:
        die(f"{path}: header says {hdr[2]} tokens, file holds {len(toks)}")
    return toks


def batch_at(toks, step, B, T):
    """zp's stream with data.shuffle = false, dp 1, grad_accum 1: step s, row b reads sample
    s*B + b = tokens [i*T, i*T + T + 1) (core/data.h)."""
    n = (len(toks) - 1) // T
    x = np.empty((B, T), dtype=np.int64)
    y = np.empty((B, T), dtype=np.int64)
    for b in range(B):
        i = step * B + b
        if i >= n:
            die(f"shard too small: step {step} row {b} needs sample {i}, shard has {n}")
        w = toks[i * T:i * T + T + 1].astype(np.int64)
        x[b], y[b] = w[:-1], w[1:]
    return torch.from_numpy(x), torch.from_numpy(y)


# ------------------------------------------------------------------------------------ model

class Ref:
    def __init__(self, d):
        self.dir = d
        mp = os.path.join(d, "manifest.json")
        if not os.path.exists(mp):
            die(f"{mp} not found: run check_model first (it writes the reference dump)")
        with open(mp) as f:
            self.m = json.load(f)
        if self.m.get("format") != "zp-model-ref-1":
            die(f"{mp}: unknown format {self.m.get('format')}")
        mo = self.m["model"]
        self.L, self.NH, self.C = mo["n_layer"], mo["n_head"], mo["d_model"]
        self.V, self.Vp, self.maxT = mo["vocab_size"], mo["vocab_padded"], mo["seq_len"]
        self.tensors = self.m["tensors"]
        self.total = self.m["total_elems"]
        self.flat_w = self.load_flat(self.m["weights"])
        b = self.m["batch"]
        self.B, self.T = b["B"], b["T"]
        self.inputs = self.load_i32(b["inputs"]).view(self.B, self.T)
        self.targets = self.load_i32(b["targets"]).view(self.B, self.T)

    def load_flat(self, name):
        p = os.path.join(self.dir, name)
        a = np.fromfile(p, dtype="<f4")
        if a.size != self.total:
            die(f"{p}: {a.size} floats, manifest says {self.total}")
        return torch.from_numpy(a.astype(np.float32))

    def load_i32(self, name):
        return torch.from_numpy(np.fromfile(os.path.join(self.dir, name), dtype="<i4").astype(np.int64))

    def unflatten(self, flat):
        return {t["name"]: flat[t["offset"]:t["offset"] + t["numel"]].view(*t["shape"]) for t in self.tensors}


def gpt2_forward(P, idx, tgt, R, attn="sdpa"):
    """P: name -> tensor (all one dtype). Returns (fp32 loss, logits [B,T,Vp])."""
    B, T = idx.shape
    C, NH = R.C, R.NH
    x = F.embedding(idx, P["wte.weight"]) + P["wpe.weight"][:T]
    for l in range(R.L):
        p = lambda s: P[f"h.{l}.{s}"]  # noqa: E731
        h = F.layer_norm(x, (C,), p("ln_1.weight"), p("ln_1.bias"), 1e-5)
        q, k, v = F.linear(h, p("attn.c_attn.weight"), p("attn.c_attn.bias")).split(C, dim=2)
        q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in (q, k, v))
        if attn == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # explicit math, softmax in fp32
            att = (q @ k.transpose(-2, -1)).float() / math.sqrt(C // NH)
            mask = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
            att = att.masked_fill(~mask, float("-inf")).softmax(-1).to(v.dtype)
            y = att @ v
        x = x + F.linear(y.transpose(1, 2).contiguous().view(B, T, C), p("attn.c_proj.weight"), p("attn.c_proj.bias"))
        h = F.layer_norm(x, (C,), p("ln_2.weight"), p("ln_2.bias"), 1e-5)
        h = F.gelu(F.linear(h, p("mlp.c_fc.weight"), p("mlp.c_fc.bias")), approximate="tanh")
        x = x + F.linear(h, p("mlp.c_proj.weight"), p("mlp.c_proj.bias"))
    x = F.layer_norm(x, (C,), P["ln_f.weight"], P["ln_f.bias"], 1e-5)
    logits = F.linear(x, P["wte.weight"])  # tied head, [B, T, Vp]
    loss = F.cross_entropy(logits[..., :R.V].float().reshape(-1, R.V), tgt.reshape(-1))
    return loss, logits


def loss_and_grads(R, weights32, idx, tgt, dtype, dev, attn):
    P = {n: w.detach().to(dev).to(dtype).clone().requires_grad_(True) for n, w in weights32.items()}
    loss, logits = gpt2_forward(P, idx.to(dev), tgt.to(dev), R, attn)
    loss.backward()
    grads = {n: p.grad.float().cpu() for n, p in P.items()}
    return loss.item(), logits.detach()[..., :R.V].float().cpu(), grads


# ------------------------------------------------------------------------------------ AdamW

def adamw_zp(p, g, m, v, t, lr, b1, b2, eps, wd):
    """zp's AdamW (core/backend_cpu.c), in fp32, in place on p, m, v."""
    bc1 = float(np.float32(1.0 - b1 ** t))
    bc2 = float(np.float32(1.0 - b2 ** t))
    m.mul_(b1).add_(g, alpha=1.0 - b1)
    v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
    upd = (m / bc1) / ((v / bc2).sqrt() + eps) + wd * p
    p.sub_(lr * upd)


def adamw_selfcheck():
    """Our AdamW equals torch.optim.AdamW (same math, rounding differs)."""
    torch.manual_seed(0)
    p0 = torch.randn(1000)
    a = p0.clone()
    b = p0.clone().requires_grad_(True)
    m, v = torch.zeros(1000), torch.zeros(1000)
    opt = torch.optim.AdamW([b], lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, foreach=False)
    for t in range(1, 6):
        g = torch.randn(1000)
        adamw_zp(a, g, m, v, t, 1e-3, 0.9, 0.95, 1e-8, 0.1)
        b.grad = g.clone()
        opt.step()
    return rel_l2(a, b.detach())


def train_losses(R, w0, toks, steps, B, T, dev, mode, hp, attn):
    """mode fp32: params fp32; mode bf16: fp32 master, bf16 params and grads (zp's scheme)."""
    decay = {t["name"]: bool(t["decay"]) for t in R.tensors}
    master = {n: w.to(dev).clone() for n, w in w0.items()}
    m = {n: torch.zeros_like(w) for n, w in master.items()}
    v = {n: torch.zeros_like(w) for n, w in master.items()}
    losses = []
    for s in range(steps):
        x, y = batch_at(toks, s, B, T)
        dt = torch.float32 if mode == "fp32" else torch.bfloat16
        P = {n: w.detach().to(dt).clone().requires_grad_(True) for n, w in master.items()}
        loss, _ = gpt2_forward(P, x.to(dev), y.to(dev), R, attn)
        loss.backward()
        losses.append(loss.item())
        with torch.no_grad():
            for n in master:
                adamw_zp(master[n], P[n].grad.float(), m[n], v[n], s + 1, hp.lr, hp.beta1, hp.beta2, hp.eps,
                         hp.weight_decay if decay[n] else 0.0)
    return losses


def read_metrics(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            j = json.loads(line)
            if "loss" in j and "step" in j:
                out[int(j["step"])] = float(j["loss"])
    return [out[k] for k in sorted(out)]


# ------------------------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ref", default=os.path.join(os.environ.get("OUT", "/tmp/zp-out"), "model_ref"))
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "math"], help="attention in PyTorch")
    ap.add_argument("--tol-factor", type=float, default=TOL_FACTOR)
    ap.add_argument("--tol-floor", type=float, default=TOL_FLOOR)
    ap.add_argument("--tol-fp32", type=float, default=TOL_FP32)
    ap.add_argument("--train-shard", help="llm.c shard zp trained on (data.shuffle=false)")
    ap.add_argument("--train-metrics", action="append", default=[], metavar="LABEL=PATH",
                    help="zp metrics.jsonl of a matching run; LABEL ends in _fp32 or _bf16")
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--train-B", type=int, default=0, help="micro-batch of the zp runs (default: the manifest's B)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.95)
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--json", help="write all numbers here")
    ap.add_argument("--make-shard", metavar="PATH", help="write the training shard and exit")
    ap.add_argument("--shard-tokens", type=int, default=65536)
    a = ap.parse_args()

    if a.make_shard:
        write_shard(a.make_shard, a.shard_tokens)
        print(f"torch_parity: wrote {a.make_shard} ({a.shard_tokens} tokens)")
        return 0

    dev = a.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda" and not torch.cuda.is_available():
        die("--device cuda but torch.cuda.is_available() is False")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    dname = torch.cuda.get_device_name() if dev == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"# torch {torch.__version__} on {dname}; reference {a.ref}; attention {a.attn}")
    t0 = time.time()
    R = Ref(a.ref)
    W = R.unflatten(R.flat_w)
    print(f"# model L={R.L} NH={R.NH} C={R.C} V={R.V} (padded {R.Vp}), batch {R.B}x{R.T}, {len(R.tensors)} tensors")

    results = {"device": dname, "torch": torch.__version__, "checks": []}
    fails = []

    def record(section, name, value, tol, ok, extra=None):
        results["checks"].append(dict(section=section, name=name, value=value, tol=tol, ok=bool(ok), **(extra or {})))
        if not ok:
            fails.append(f"{section}: {name} = {value:.3e} > tol {tol:.1e}")

    l32, logits32, g32 = loss_and_grads(R, W, R.inputs, R.targets, torch.float32, dev, a.attn)
    l16, logits16, g16 = loss_and_grads(R, W, R.inputs, R.targets, torch.bfloat16, dev, a.attn)
    print(f"# PyTorch loss fp32 {l32:.6f}, bf16 {l16:.6f} ({time.time() - t0:.1f} s)")

    # (a) measured bf16 error -> tolerance per tensor
    e16 = {n: rel_l2(g16[n], g32[n]) for n in g32}
    tol = {n: max(a.tol_factor * e16[n], a.tol_floor) for n in g32}
    e16_loss = abs(l16 - l32) / abs(l32)
    tol_loss = max(a.tol_factor * e16_loss, a.tol_floor)
    e16_logits = rel_l2(logits16, logits32)
    results["torch_bf16_vs_fp32"] = dict(loss=e16_loss, logits=e16_logits, grads=e16)

    runs = R.m["runs"]
    fp32_runs = [r for r in runs if r["precision"] in ("fp32", "fp64")]
    bf16_runs = [r for r in runs if r["precision"] == "bf16"]
    zg = {}
    for r in runs:
        zg[r["label"]] = R.unflatten(R.load_flat(r["grads"]))

    # table
    hdr = f"{'tensor':<26} {'torch bf16':>11} {'tol':>9}"
    for r in fp32_runs:
        hdr += f" {r['label'][:14]:>14}"
    for r in bf16_runs:
        hdr += f" {r['label'][:14]:>14} {'x torch':>7}"
    print("\nrel-L2 vs PyTorch fp32 (gradients; loss relative)")
    print(hdr)

    def row(name, e, t, vals32, vals16):
        s = f"{name:<26} {e:11.3e} {t:9.1e}"
        for v in vals32:
            s += f" {v:13.3e}{' ' if v <= a.tol_fp32 else '!'}"
        for v in vals16:
            s += f" {v:13.3e}{' ' if v <= t else '!'} {v / e if e > 0 else float('inf'):7.2f}"
        print(s)

    # loss
    v32 = [abs(r["loss"] - l32) / abs(l32) for r in fp32_runs]
    v16 = [abs(r["loss"] - l32) / abs(l32) for r in bf16_runs]
    row("loss", e16_loss, tol_loss, v32, v16)
    for r, v in zip(fp32_runs, v32):
        record("b", f"{r['label']} loss", v, TOL_FP32_LOSS, v <= TOL_FP32_LOSS)
    for r, v in zip(bf16_runs, v16):
        record("c", f"{r['label']} loss", v, tol_loss, v <= tol_loss)
    worst = {r["label"]: (0.0, "") for r in runs}
    for t in R.tensors:
        n = t["name"]
        v32 = [rel_l2(zg[r["label"]][n], g32[n]) for r in fp32_runs]
        v16 = [rel_l2(zg[r["label"]][n], g32[n]) for r in bf16_runs]
        row(n, e16[n], tol[n], v32, v16)
        for r, v in zip(fp32_runs, v32):
            record("b", f"{r['label']} {n}", v, a.tol_fp32, v <= a.tol_fp32)
        for r, v in zip(bf16_runs, v16):
            record("c", f"{r['label']} {n}", v, tol[n], v <= tol[n], dict(torch_bf16=e16[n]))
        for r, v in zip(fp32_runs + bf16_runs, v32 + v16):
            if not (v <= worst[r["label"]][0]):
                worst[r["label"]] = (v, n)
    print(f"(logits: PyTorch bf16 vs fp32 rel-L2 {e16_logits:.3e}; '!' marks a failure; 'x torch' = zp error / PyTorch bf16 error)")
    results["worst"] = worst

    # (d) training
    train_summary = []
    if a.train_metrics:
        if not a.train_shard:
            die("--train-metrics needs --train-shard")
        ac = adamw_selfcheck()
        record("d", "AdamW formula vs torch.optim.AdamW", ac, 1e-5, ac <= 1e-5)
        toks = read_shard(a.train_shard)
        B = a.train_B or R.B
        T = R.T
        t1 = time.time()
        ref32 = train_losses(R, W, toks, a.train_steps, B, T, dev, "fp32", a, a.attn)
        ref16 = train_losses(R, W, toks, a.train_steps, B, T, dev, "bf16", a, a.attn)
        print(f"\n# training: {a.train_steps} AdamW steps, lr {a.lr:g} constant, wd {a.weight_decay:g} (2-D weights), betas "
              f"{a.beta1:g}/{a.beta2:g}, eps {a.eps:g}, no clipping, batch {B}x{T} ({time.time() - t1:.1f} s); AdamW self-check {ac:.1e}")
        dev16 = max(abs(x - y) / abs(y) for x, y in zip(ref16, ref32))
        tol16 = max(a.tol_factor * dev16, TRAIN_TOL_FLOOR)
        zl = {}
        for spec in a.train_metrics:
            if "=" not in spec:
                die(f"--train-metrics {spec}: expected LABEL=PATH")
            lab, path = spec.split("=", 1)
            if not os.path.exists(path):
                record("d", f"{lab} metrics file", float("nan"), 0, False)
                print(f"# {lab}: {path} missing (the zp run failed?)")
                continue
            zl[lab] = read_metrics(path)
            if len(zl[lab]) < a.train_steps:
                record("d", f"{lab} steps in metrics", len(zl[lab]), a.train_steps, False)
        head = f"{'step':>4} {'torch fp32':>11} {'torch bf16':>11}" + "".join(f" {k[:16]:>16}" for k in zl)
        print(head)
        for s in range(a.train_steps):
            line = f"{s + 1:4d} {ref32[s]:11.6f} {ref16[s]:11.6f}"
            for k, ls in zl.items():
                line += f" {ls[s]:16.6f}" if s < len(ls) else f" {'-':>16}"
            print(line)
        for k, ls in zl.items():
            n = min(len(ls), a.train_steps)
            if n == 0:
                continue
            d = max(abs(ls[s] - ref32[s]) / abs(ref32[s]) for s in range(n))
            t = tol16 if k.endswith("_bf16") else TRAIN_TOL_FP32
            record("d", f"{k} 10-step losses", d, t, d <= t)
            train_summary.append(f"{k}: max rel loss diff {d:.2e} (tol {t:.1e})")
            print(f"# {k}: max relative loss difference vs PyTorch fp32 over {n} steps {d:.3e} (tol {t:.1e})")
        print(f"# PyTorch bf16 vs fp32 over the steps: max rel {dev16:.3e} -> bf16 tolerance {tol16:.1e}")
        results["train"] = dict(torch_fp32=ref32, torch_bf16=ref16, zp=zl, bf16_tol=tol16)

    # summary
    print("\nTORCH PARITY SUMMARY")
    print(f"  (a) PyTorch bf16 vs fp32: loss {e16_loss:.2e}, logits {e16_logits:.2e}, grads rel-L2 median "
          f"{float(np.median(list(e16.values()))):.2e}, max {max(e16.values()):.2e}")
    for r in fp32_runs:
        v, n = worst[r["label"]]
        print(f"  (b) {r['label']} vs PyTorch fp32: loss {abs(r['loss'] - l32) / abs(l32):.2e}, worst grad {v:.2e} ({n}), tol {a.tol_fp32:.0e}")
    for r in bf16_runs:
        v, n = worst[r["label"]]
        ratio = max(rel_l2(zg[r['label']][t['name']], g32[t['name']]) / max(e16[t['name']], 1e-30) for t in R.tensors)
        print(f"  (c) {r['label']} vs PyTorch fp32: loss {abs(r['loss'] - l32) / abs(l32):.2e}, worst grad {v:.2e} ({n}), "
              f"worst zp/torch-bf16 error ratio {ratio:.2f} (allowed {a.tol_factor:g}, floor {a.tol_floor:g})")
    for s in train_summary:
        print(f"  (d) {s}")
    ok = not fails
    print(f"TORCH_PARITY {'PASS' if ok else 'FAIL'}: {len(results['checks']) - len(fails)} passed, {len(fails)} failed")
    for f in fails[:20]:
        print(f"  FAIL {f}")
    if len(fails) > 20:
        print(f"  ... and {len(fails) - 20} more")
    results["ok"] = ok
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1, default=float)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
