#!/usr/bin/env python3
"""hf_interop.py: Hugging Face interop of `zp export` / `zp import`, checked by logits.

Both directions on a small GPT-2-shaped model (n_layer 2, n_head 4, d_model 64, seq_len 32,
vocab 50257 padded to 50304 inside zp), fp32, on the CPU:

  A. zp -> HF: `zp train` 3 AdamW steps (so every bias and norm moves off its init), `zp export`
     (fp32, and bf16), then the reference model loads the export and computes logits on 32 fixed
     tokens; `zp ckpt logits` computes them from the checkpoint (fp32) and from a `zp import` of
     the bf16 export (the same bf16-rounded weights the reference sees).
  B. HF -> zp: the reference creates a random model (every parameter perturbed, LayerNorm
     weights around 1), saves it as safetensors; `zp import` turns it into a checkpoint and
     `zp ckpt logits` computes logits on the same tokens.

Reference: transformers' GPT2LMHeadModel (eager attention, fp32, CPU) when transformers and
torch import. Otherwise (said loudly in the output) GPT-2 written out here in Hugging Face's
layout (Conv1D weights [in, out], tanh GELU, LayerNorm eps 1e-5, tied classifier) reading the
safetensors files with this script's own parser: with plain torch ops in fp32 (F.layer_norm,
F.gelu(approximate="tanh"), softmax) when torch imports, else in float64 numpy. Without
transformers direction B's file is written by this script in HF's layout with a
"transformer." prefix, an old-style h.0.attn.bias mask buffer and a tied lm_head.weight,
which zp import must accept.

Tolerance (stated, checked): max |logit_zp - logit_ref| <= 1e-4 * max(1, max |logit_ref|) and
the same argmax at every position. Both sides compute in fp32 (the numpy reference in fp64);
the differences come from summation order in the matmuls and softmax and from zp's tanh
(absolute error < 1e-7); measured about 1e-6 on this model.

Prints one line per check and a summary ("HF INTEROP SUMMARY"), exit status 0 iff all pass.
usage: hf_interop.py --zp BUILD/zp --work DIR [--reference auto|transformers|numpy]
"""
import argparse
import json
import os
import struct
import subprocess
import sys

import numpy as np

N_LAYER, N_HEAD, D_MODEL, SEQ, VOCAB, VOCAB_PAD = 2, 4, 64, 32, 50257, 128
REL_TOL = 1e-4

# ----------------------------------------------------------------------------- safetensors


def st_read(path):
    """Parse a safetensors file (validating offsets) -> (dict name -> float64 array, metadata)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: too short")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError(f"{path}: header length {n} exceeds the file")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    buf = data[8 + n:]
    meta = header.pop("__metadata__", {})
    out, spans = {}, []
    for name, e in header.items():
        dt, shape, (b, en) = e["dtype"], e["shape"], e["data_offsets"]
        if not 0 <= b <= en <= len(buf):
            raise ValueError(f"{path}: {name}: offsets outside the buffer")
        raw = buf[b:en]
        if dt == "F32":
            a = np.frombuffer(raw, dtype="<f4").astype(np.float64)
        elif dt == "F16":
            a = np.frombuffer(raw, dtype="<f2").astype(np.float64)
        elif dt == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        elif dt in ("U8", "BOOL"):
            a = np.frombuffer(raw, dtype=np.uint8).astype(np.float64)
        else:
            raise ValueError(f"{path}: {name}: dtype {dt} not handled here")
        if a.size != int(np.prod(shape)):
            raise ValueError(f"{path}: {name}: size does not match shape")
        out[name] = a.reshape(shape)
        spans.append((b, en))
    spans.sort()
    pos = 0
    for b, en in spans:
        if b != pos:
            raise ValueError(f"{path}: hole or overlap at byte {b}")
        pos = en
    return out, meta


def st_write(path, tensors, metadata):
    """tensors: list of (name, array, dtype 'F32' or 'U8')."""
    header, blobs, pos = {"__metadata__": metadata}, [], 0
    for name, a, dt in tensors:
        raw = np.ascontiguousarray(a, dtype="<f4" if dt == "F32" else np.uint8).tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [pos, pos + len(raw)]}
        blobs.append(raw)
        pos += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


# ----------------------------------------------------------------------------- numpy GPT-2


def strip(w):
    return {(k[12:] if k.startswith("transformer.") else k): v for k, v in w.items()}


def ln(x, g, b):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5) * g + b


def gelu_new(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def gpt2_forward(w, n_head, tokens):
    """Logits [T, V] of GPT-2 with Hugging Face's tensor names and layout, float64."""
    w = strip(w)
    T = len(tokens)
    x = w["wte.weight"][tokens] + w["wpe.weight"][:T]
    C = x.shape[1]
    hd = C // n_head
    mask = np.triu(np.full((T, T), -np.inf), 1)
    L = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("h."))
    for i in range(L):
        p = f"h.{i}."
        h = ln(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        qkv = h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]  # Conv1D: [C, 3C]
        q, k, v = (qkv[:, j * C:(j + 1) * C].reshape(T, n_head, hd).transpose(1, 0, 2) for j in range(3))
        att = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = (att @ v).transpose(1, 0, 2).reshape(T, C)
        x = x + y @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        h = ln(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        h = gelu_new(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
        x = x + h @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    x = ln(x, w["ln_f.weight"], w["ln_f.bias"])
    return x @ w["wte.weight"].T


def gpt2_forward_torch(torch, w, n_head, tokens):
    """The same GPT-2 with torch's own fp32 ops (CPU)."""
    F = torch.nn.functional
    w = {k: torch.from_numpy(v.astype(np.float32)) for k, v in strip(w).items()}
    T = len(tokens)
    idx = torch.tensor(tokens, dtype=torch.long)
    x = w["wte.weight"][idx] + w["wpe.weight"][:T]
    C = x.shape[1]
    hd = C // n_head
    L = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("h."))
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    with torch.no_grad():
        for i in range(L):
            p = f"h.{i}."
            h = F.layer_norm(x, (C,), w[p + "ln_1.weight"], w[p + "ln_1.bias"], 1e-5)
            qkv = h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
            q, k, v = (t.view(T, n_head, hd).transpose(0, 1) for t in qkv.split(C, dim=1))
            att = (q @ k.transpose(1, 2)) / (hd ** 0.5)
            att = att.masked_fill(~causal, float("-inf")).softmax(-1)
            y = (att @ v).transpose(0, 1).reshape(T, C)
            x = x + y @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
            h = F.layer_norm(x, (C,), w[p + "ln_2.weight"], w[p + "ln_2.bias"], 1e-5)
            h = F.gelu(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"], approximate="tanh")
            x = x + h @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
        x = F.layer_norm(x, (C,), w["ln_f.weight"], w["ln_f.bias"], 1e-5)
        return (x @ w["wte.weight"].T).double().numpy()


# ----------------------------------------------------------------------------- helpers

RESULTS = []


def check(name, ok, detail):
    RESULTS.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)


def run(cmd, log):
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise RuntimeError(f"command failed ({r.returncode}): {' '.join(cmd)} (see {log})")


def zp_logits(zp, ckpt, tokens, out, log):
    run([zp, "ckpt", "logits", ckpt, "--tokens", ",".join(map(str, tokens)), "--out", out], log)
    return np.fromfile(out, dtype="<f4").astype(np.float64).reshape(len(tokens), VOCAB)


def compare(name, got, ref):
    d = float(np.abs(got - ref).max())
    scale = max(1.0, float(np.abs(ref).max()))
    same_argmax = bool((got.argmax(-1) == ref.argmax(-1)).all())
    ok = d <= REL_TOL * scale and same_argmax and got.shape == ref.shape
    check(name, ok, f"max |dlogit| = {d:.3g} (tolerance {REL_TOL * scale:.3g}), max |logit| = {scale:.3g}, "
          f"argmax {'equal' if same_argmax else 'DIFFERS'} at all {ref.shape[0]} positions")


def write_shard(path, n, seed):
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, VOCAB, size=n).astype("<u2")
    hdr = np.zeros(256, dtype="<i4")
    hdr[0], hdr[1], hdr[2] = 20240520, 1, n
    with open(path, "wb") as f:
        f.write(hdr.tobytes() + toks.tobytes())


CONFIG = f"""# hf_interop.py: a small GPT-2-shaped model
[model]
n_layer = {N_LAYER}
n_head = {N_HEAD}
d_model = {D_MODEL}
seq_len = {SEQ}
vocab_size = {VOCAB}
vocab_pad = {VOCAB_PAD}
[data]
train = "train_000.bin"
shuffle = false
[train]
device = "cpu"
precision = "fp32"
micro_batch = 2
steps = 3
lr = 1e-2
lr_schedule = "constant"
weight_decay = 0.0
grad_clip = 0.0
log_every = 1
checkpoint_every = 0
save_final = true
resume = "never"
metrics = false
"""


def load_reference(mode):
    """-> (torch or None, transformers or None)"""
    if mode == "numpy":
        return None, None
    torch = None
    try:
        import torch as _torch
        torch = _torch
        import transformers
        return torch, transformers
    except Exception as e:  # noqa: BLE001
        if mode == "transformers":
            raise
        what = "plain torch ops (fp32)" if torch else "float64 numpy"
        print(f"NOTE: transformers not importable ({type(e).__name__}: {e}); the reference is this script's GPT-2 in Hugging "
              f"Face's layout with {what}, NOT transformers. Run where transformers is installed for the full check.", flush=True)
        return torch, None


def hf_logits(torch, transformers, model_dir, tokens):
    kw = {"attn_implementation": "eager"}
    try:
        m = transformers.GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32, **kw)
    except TypeError:
        m = transformers.GPT2LMHeadModel.from_pretrained(model_dir, torch_dtype=torch.float32, **kw)
    m.eval()
    with torch.no_grad():
        out = m(torch.tensor([tokens], dtype=torch.long)).logits[0]
    return out.double().numpy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zp", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--reference", default="auto", choices=["auto", "transformers", "numpy"])
    a = ap.parse_args()
    zp = os.path.abspath(a.zp)
    work = os.path.abspath(a.work)
    os.makedirs(work, exist_ok=True)
    log = os.path.join(work, "zp.log")
    torch, transformers = load_reference(a.reference)
    if transformers:
        ref_name = f"transformers {transformers.__version__} GPT2LMHeadModel (torch {torch.__version__}, fp32, CPU, eager)"
    elif torch:
        ref_name = f"torch-ops GPT-2 (HF layout, torch {torch.__version__}, fp32, CPU)"
    else:
        ref_name = "numpy float64 GPT-2 (HF layout)"

    def own_reference(weights, toks):
        return gpt2_forward_torch(torch, weights, N_HEAD, toks) if torch else gpt2_forward(weights, N_HEAD, toks)
    print(f"reference: {ref_name}", flush=True)
    tokens = [int(t) for t in np.random.default_rng(7).integers(0, VOCAB, size=SEQ)]
    tokens[0], tokens[-1] = 50256, 0  # the last real token and token 0

    # ---- A: zp -> HF
    cfg = os.path.join(work, "model.toml")
    with open(cfg, "w") as f:
        f.write(CONFIG)
    write_shard(os.path.join(work, "train_000.bin"), 4096, 1)
    run_dir = os.path.join(work, "run")
    run([zp, "train", cfg, "--set", f"train.out_dir={run_dir}"], log)
    ckpt = os.path.join(run_dir, "ckpt_00000003")
    l_zp = zp_logits(zp, ckpt, tokens, os.path.join(work, "zp_logits.bin"), log)
    exp32, exp16 = os.path.join(work, "export_fp32"), os.path.join(work, "export_bf16")
    run([zp, "export", ckpt, "--out", exp32], log)
    run([zp, "export", ckpt, "--out", exp16, "--dtype", "bf16"], log)
    w, meta = st_read(os.path.join(exp32, "model.safetensors"))
    shapes_ok = (w["wte.weight"].shape == (VOCAB, D_MODEL) and w["h.0.attn.c_attn.weight"].shape == (D_MODEL, 3 * D_MODEL)
                 and w["h.1.mlp.c_fc.weight"].shape == (D_MODEL, 4 * D_MODEL) and w["h.1.mlp.c_proj.weight"].shape == (4 * D_MODEL, D_MODEL)
                 and "lm_head.weight" not in w and meta.get("format") == "pt" and len(w) == 4 + 12 * N_LAYER)
    check("export: names, Conv1D shapes, vocab cut to 50257, metadata format=pt", shapes_ok,
          f"{len(w)} tensors, wte {w['wte.weight'].shape}, c_attn {w['h.0.attn.c_attn.weight'].shape}")
    moved = all(float(np.abs(w[f"h.{i}.{n}"]).max()) > 0 for i in range(N_LAYER) for n in ("attn.c_attn.bias", "mlp.c_proj.bias"))
    check("export: trained model (biases moved off zero)", moved, "3 AdamW steps at lr 1e-2")
    if transformers:
        ref = hf_logits(torch, transformers, exp32, tokens)
    else:
        ref = own_reference(w, tokens)
        if torch:  # the two written-out references agree with each other too
            d = float(np.abs(gpt2_forward(w, N_HEAD, tokens) - ref).max())
            print(f"      (torch-ops vs numpy float64 reference: max |dlogit| {d:.3g})", flush=True)
    compare(f"A zp->HF fp32: zp logits vs {ref_name.split(' (')[0]} on the export", l_zp, ref)
    imp16 = os.path.join(work, "import_bf16")
    run([zp, "import", os.path.join(exp16, "model.safetensors"), "--config", cfg, "--out", imp16], log)
    l_zp16 = zp_logits(zp, os.path.join(imp16, "ckpt_00000000"), tokens, os.path.join(work, "zp_logits16.bin"), log)
    if transformers:
        ref16 = hf_logits(torch, transformers, exp16, tokens)
    else:
        ref16 = own_reference(st_read(os.path.join(exp16, "model.safetensors"))[0], tokens)
    compare("A zp->HF bf16 export (fp32 compute on the bf16 weights)", l_zp16, ref16)
    d16 = float(np.abs(l_zp16 - l_zp).max())
    print(f"      (bf16 rounding of the weights moves the logits by up to {d16:.3g})", flush=True)

    # ---- B: HF -> zp
    src_dir = os.path.join(work, "hf_model")
    os.makedirs(src_dir, exist_ok=True)
    if transformers:
        torch.manual_seed(0)
        conf = transformers.GPT2Config(n_layer=N_LAYER, n_head=N_HEAD, n_embd=D_MODEL, n_positions=SEQ, vocab_size=VOCAB,
                                       activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                       layer_norm_epsilon=1e-5, tie_word_embeddings=True)
        model = transformers.GPT2LMHeadModel(conf).eval()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("ln_1.weight") or n.endswith("ln_2.weight") or n.endswith("ln_f.weight"):
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                else:
                    p.copy_(0.05 * torch.randn_like(p))
        model.save_pretrained(src_dir)
        src = os.path.join(src_dir, "model.safetensors")
        with torch.no_grad():
            ref_b = model(torch.tensor([tokens], dtype=torch.long)).logits[0].double().numpy()
        names = sorted(st_read(src)[0].keys())
        print(f"      transformers saved {len(names)} tensors, e.g. {names[0]}, {names[-1]}", flush=True)
    else:
        rng = np.random.default_rng(0)
        tens = []
        for name, arr in w.items():  # the export's names and HF shapes, fresh random values
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                v = 1.0 + 0.1 * rng.standard_normal(arr.shape)
            else:
                v = 0.05 * rng.standard_normal(arr.shape)
            tens.append(("transformer." + name, v.astype(np.float32), "F32"))
        wte = [t for t in tens if t[0] == "transformer.wte.weight"][0][1]
        tens.append(("lm_head.weight", wte, "F32"))
        tens.append(("transformer.h.0.attn.bias", np.tril(np.ones((1, 1, SEQ, SEQ), dtype=np.uint8)), "U8"))
        src = os.path.join(src_dir, "model.safetensors")
        st_write(src, tens, {"format": "pt"})
        ref_b = own_reference({n: v.astype(np.float64) for n, v, d in tens if d == "F32" and n != "lm_head.weight"}, tokens)
    impb = os.path.join(work, "import_hf")
    run([zp, "import", src, "--config", cfg, "--out", impb], log)
    l_b = zp_logits(zp, os.path.join(impb, "ckpt_00000000"), tokens, os.path.join(work, "zp_logits_b.bin"), log)
    compare(f"B HF->zp: zp logits after `zp import` vs {ref_name.split(' (')[0]}", l_b, ref_b)

    bad = [r for r in RESULTS if not r[1]]
    print("\nHF INTEROP SUMMARY")
    print(f"reference: {ref_name}")
    print(f"model: n_layer {N_LAYER} n_head {N_HEAD} d_model {D_MODEL} seq {SEQ} vocab {VOCAB}; tolerance max|dlogit| <= "
          f"{REL_TOL:g} x max(1, max|logit|), argmax equal")
    for name, ok, detail in RESULTS:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}")
    print(f"{'ALL PASS' if not bad else f'{len(bad)} FAILED'}" + ("" if transformers else "  (transformers was not available: see the reference line)"))
    return 1 if bad else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # noqa: BLE001
        print(f"FAIL  hf_interop: {type(e).__name__}: {e}", flush=True)
        print("\nHF INTEROP SUMMARY\n  FAIL (the script stopped early; see above)")
        sys.exit(1)
