#!/usr/bin/env python3
"""random_shard.py PATH NTOKENS: a token shard in the llm.c layout (256 int32 header: magic
20240520, version 1, token count; then uint16 tokens), uniform random over GPT-2's 50257-token
vocabulary with a fixed seed (as the PyTorch peer's torch.randint). Reused when PATH already
holds a shard of that size. Used by bench/gpu_bench.sh, offload_bench.sh and scaling.sh."""
import os
import sys

import numpy as np

path, n = sys.argv[1], int(sys.argv[2])
if not (os.path.exists(path) and os.path.getsize(path) == 1024 + 2 * n):
    hdr = np.zeros(256, dtype="<i4")
    hdr[:3] = (20240520, 1, n)
    toks = np.random.default_rng(1234).integers(0, 50257, size=n, dtype=np.uint16)
    with open(path + ".tmp", "wb") as f:
        f.write(hdr.tobytes())
        f.write(toks.astype("<u2").tobytes())
    os.replace(path + ".tmp", path)
