# examples/tiny_lm.lrk's TinyLM with std.adapters' LoRA and std.optim's AdamW, written by hand in
# PyTorch on the CPU: the PyTorch column of `npm run bench:train` (bench/train.ts runs it).
#
#   python3 bench/tiny_lm_torch.py DIR
#
# DIR holds what bench/train.ts wrote: manifest.json (config, every `param:` tensor of lrk's
# initialized store with its offset, the batches, the schedule factor of every step) and data.bin
# (the float32 weights, then the int32 batches). The step mirrors bench/tiny-lm-tfjs.ts op for op
# (which mirrors lrk's): LayerNorm with the biased variance, exact erf gelu, causal scores masked
# to -1e9, LoRA base(x) + scale * (x A^T) B^T, cross-entropy over targets != -1, global-norm
# clipping g * min(1, clip / (||g|| + 1e-6)), bias-corrected AdamW with decoupled weight decay.
# Run with OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads then sleep instead of spinning, which on a
# shared machine takes the cores the timed threads need).
#
# Runs the first `check` steps and prints one JSON line: their losses (compared with lrk's by the
# caller before the timing counts), the thread count and torch's version. Then it times one step
# per line it reads ("I": the step of batch I), answering each with its milliseconds, so that the
# caller alternates them with its own steps; "quit" (or the end of stdin) ends it.
import json
import math
import os
import sys
import time

import numpy as np
import torch


def blas_library():
    """The BLAS this process loaded, from its memory map: Debian's torch calls whatever
    libblas.so.3 points at, and the reference BLAS (package libblas3, the default when no
    optimized one is installed) makes its matmuls ~15x slower than OpenBLAS."""
    torch.ones(8, 8) @ torch.ones(8, 8)
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "blas" in line.lower() and "/" in line}
    except OSError:
        return "unknown"
    names = sorted(os.path.realpath(p) for p in paths)
    if any("openblas" in n for n in names):
        return "OpenBLAS"
    if any("mkl" in n for n in names):
        return "MKL"
    if any("/blas/libblas" in n for n in names):
        return "reference BLAS"
    return ", ".join(os.path.basename(n) for n in names) or "none found"


def main(folder):
    # as many threads as this process may run on (lavapipe's workers use them all too); this
    # torch build's OpenMP otherwise starts with 1 here
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    with open(os.path.join(folder, "manifest.json")) as f:
        spec = json.load(f)
    blob = np.fromfile(os.path.join(folder, "data.bin"), dtype=np.uint8)
    floats = blob.view(np.float32)
    ints = blob.view(np.int32)
    cfg = spec["config"]
    heads, scale = cfg["heads"], cfg["scale"]
    lr, wd, clip = cfg["lr"], cfg["weightDecay"], cfg.get("clip")
    beta1, beta2, eps, ln_eps = 0.9, 0.999, 1e-8, 1e-5

    frozen, trainable = {}, {}
    for p in spec["params"]:
        data = floats[p["offset"] // 4 : p["offset"] // 4 + int(np.prod(p["shape"]))]
        t = torch.from_numpy(data.copy()).reshape(p["shape"])
        path = p["name"][len("param:") :]
        if path.endswith(".lora.A") or path.endswith(".lora.B"):
            trainable[path] = t.requires_grad_(True)
        else:
            frozen[path] = t
    moments = {k: (torch.zeros_like(v), torch.zeros_like(v)) for k, v in trainable.items()}
    weight = lambda path: frozen[path] if path in frozen else trainable[path]
    layers = sum(1 for k in frozen if k.startswith("blocks.") and k.endswith(".ln1.weight"))
    d = frozen["tok.weight"].shape[1]
    width = d // heads

    def linear(x, path):
        y = x @ weight(path + ".weight").T + weight(path + ".bias")
        a, b = trainable.get(path + ".lora.A"), trainable.get(path + ".lora.B")
        if a is not None and b is not None:
            y = y + ((x @ a.T) @ b.T) * scale
        return y

    def layer_norm(x, path):
        c = x - x.mean(-1, keepdim=True)
        variance = (c * c).mean(-1, keepdim=True)
        return c * torch.rsqrt(variance + ln_eps) * weight(path + ".weight") + weight(path + ".bias")

    def gelu(x):
        return x * 0.5 * (torch.erf(x * math.sqrt(0.5)) + 1)

    def loss_of(ids, targets):
        B, T = ids.shape
        n = B * T
        h = (frozen["tok.weight"][ids.reshape(n)].reshape(B, T, d) + frozen["pos.weight"][:T]).reshape(n, d)
        mask = torch.triu(torch.full((T, T), -1e9), diagonal=1)
        split = lambda y: y.reshape(B, T, heads, width).transpose(1, 2)
        for l in range(layers):
            p = f"blocks.{l}"
            x = layer_norm(h, p + ".ln1")
            q, k, v = (split(linear(x, f"{p}.attn.{w}")) for w in "qkv")
            s = (q @ k.transpose(-1, -2)) / math.sqrt(width) + mask
            a = torch.softmax(s, -1) @ v
            h = h + linear(a.transpose(1, 2).reshape(n, d), p + ".attn.o")
            up = linear(layer_norm(h, p + ".ln2"), p + ".mlp.up")
            h = h + linear(gelu(up), p + ".mlp.down")
        logits = layer_norm(h, "lnf") @ frozen["tok.weight"].T
        logp = torch.log_softmax(logits, -1)
        flat = targets.reshape(n)
        kept = flat != -1
        picked = logp[kept, flat[kept]].sum()
        return -picked / max(int(kept.sum()), 1)

    names = list(trainable)
    params = [trainable[k] for k in names]

    def step(i, s):
        batch = spec["batches"][i]
        ids = torch.from_numpy(ints[batch["input"] // 4 : batch["input"] // 4 + batch["count"]].copy())
        targets = torch.from_numpy(
            ints[batch["target"] // 4 : batch["target"] // 4 + batch["count"]].copy()
        )
        shape = spec["batchShape"]
        ids, targets = ids.reshape(shape).long(), targets.reshape(shape).long()
        loss = loss_of(ids, targets)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            factor = 1.0
            if clip is not None:
                norm = torch.sqrt(sum((g * g).sum() for g in grads))
                factor = torch.clamp(clip / (norm + 1e-6), max=1.0)
            size = lr * spec["lrScale"][i]
            c1, c2 = 1 - beta1**s, 1 - beta2**s
            for name, w, g in zip(names, params, grads):
                g = g * factor
                m, v = moments[name]
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).add_(g * g, alpha=1 - beta2)
                update = (m / c1) / (torch.sqrt(v / c2) + eps)
                if wd:
                    update = update + w * wd
                w.sub_(update * size)
        return float(loss)

    check = spec["check"]
    losses = [step(i, i + 1) for i in range(check)]
    print(
        json.dumps(
            {
                "losses": losses,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "blas": blas_library(),
            }
        ),
        flush=True,
    )
    # then one timed step per line "I" (batch I, optimizer step I + 1), answered with its
    # milliseconds, so that the caller can alternate it with its own steps; "quit" ends
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        i = int(line)
        t0 = time.perf_counter()
        step(i, i + 1)
        print((time.perf_counter() - t0) * 1000, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
