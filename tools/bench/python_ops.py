#!/usr/bin/env python3
"""qwen3vl.ops called from numpy vs torch eager, one thread, call overhead included on both sides.

    python3 tools/bench/python_ops.py [--json out.json]

Each op is called as a user writes it: `ops.silu(x)` on a float32 numpy array against `F.silu(t)` on a
float32 CPU tensor (both allocate their result); backward ops against torch's aten backward kernels
(`aten.gelu_backward(dy, x)`, ...) or, where torch has none exposed, `torch.autograd.grad` through the
forward (rms_norm) — what a torch user pays for that gradient. Shapes: (4, 32, 512), (512, 2048),
(1200, 1024); the row is the last axis. Time: the fastest of 11 samples of ≥ 2 ms (the machine may be
shared; neighbours only add time). ratio = torch / ours (> 1: we are faster).
"""
import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import qwen3vl
from qwen3vl import ops

SHAPES = [(4, 32, 512), (512, 2048), (1200, 1024)]
aten = torch.ops.aten


def time_us(f):
    f()
    t = time.perf_counter()
    f()
    once = max(time.perf_counter() - t, 1e-7)
    reps = max(1, min(100000, int(2e-3 / once + 0.999)))
    best = float("inf")
    for _ in range(11):
        t = time.perf_counter()
        for _ in range(reps):
            f()
        best = min(best, (time.perf_counter() - t) / reps * 1e6)
    return best


def cases(shape):
    n = shape[-1]
    r = np.random.default_rng(0)
    a = (r.random(shape, dtype=np.float32) * 8 - 4)
    b = (r.random(shape, dtype=np.float32) * 8 - 4)
    w = (r.random(n, dtype=np.float32) + 0.5)
    bias = (r.random(n, dtype=np.float32) * 2 - 1)
    ta, tb, tw, tbias = (torch.from_numpy(v) for v in (a, b, w, bias))
    y = ops.softmax(a)
    ty = torch.from_numpy(y)
    xr = ta.reshape(-1, n).clone().requires_grad_(True)
    wr = tw.clone().requires_grad_(True)
    dyr = tb.reshape(-1, n)

    def torch_rms_bwd():
        out = F.rms_norm(xr, (n,), wr, 1e-6)
        return torch.autograd.grad(out, (xr, wr), dyr)

    x2 = ta.reshape(-1, n)
    _, mean, rstd = aten.native_layer_norm(x2, (n,), tw, tbias, 1e-5)
    return [
        ("rms_norm", lambda: ops.rms_norm(a, w, 1e-6), lambda: F.rms_norm(ta, (n,), tw, 1e-6)),
        ("layer_norm", lambda: ops.layer_norm(a, w, bias, 1e-5), lambda: F.layer_norm(ta, (n,), tw, tbias, 1e-5)),
        ("normalize", lambda: ops.normalize(a), lambda: F.normalize(ta, dim=-1)),
        ("softmax", lambda: ops.softmax(a), lambda: torch.softmax(ta, -1)),
        ("gelu_tanh", lambda: ops.gelu_tanh(a), lambda: F.gelu(ta, approximate="tanh")),
        ("gelu_erf", lambda: ops.gelu_erf(a), lambda: F.gelu(ta)),
        ("silu", lambda: ops.silu(a), lambda: F.silu(ta)),
        ("relu", lambda: ops.relu(a), lambda: F.relu(ta)),
        ("swiglu", lambda: ops.swiglu(a, b), lambda: F.silu(ta) * tb),
        ("gelu_tanh_backward", lambda: ops.gelu_tanh_backward(a, b),
         lambda: aten.gelu_backward(tb, ta, approximate="tanh")),
        ("gelu_erf_backward", lambda: ops.gelu_erf_backward(a, b), lambda: aten.gelu_backward(tb, ta)),
        ("silu_backward", lambda: ops.silu_backward(a, b), lambda: aten.silu_backward(tb, ta)),
        ("relu_backward", lambda: ops.relu_backward(a, b), lambda: aten.threshold_backward(tb, ta, 0.0)),
        ("softmax_backward", lambda: ops.softmax_backward(y, b),
         lambda: aten._softmax_backward_data(tb, ty, -1, torch.float32)),
        ("rms_norm_backward", lambda: ops.rms_norm_backward(a, w, b, 1e-6), torch_rms_bwd),
        ("layer_norm_backward", lambda: ops.layer_norm_backward(a, w, b, 1e-5),
         lambda: aten.native_layer_norm_backward(dyr, x2, (n,), mean, rstd, tw, tbias, [True, True, True])),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    qwen3vl.set_threads(1)
    cpu = qwen3vl.cpu()
    results, ratios = {}, []
    names = ["x".join(map(str, s)) for s in SHAPES]
    print(f"qwen3vl.ops ({cpu['level']}, 1 thread) vs torch {torch.__version__} eager (1 thread); µs per call, "
          f"best of 11; ratio = torch / ours\n")
    print("| op | " + " | ".join(f"{s} ours | torch | ratio" for s in names) + " |")
    print("|---|" + "---:|---:|---:|" * len(SHAPES))
    rows = {}
    for shape, sname in zip(SHAPES, names):
        for op, ours, theirs in cases(shape):
            o, t = time_us(ours), time_us(theirs)
            rows.setdefault(op, []).append((o, t))
            results.setdefault(op, {})[sname] = {"ours_us": o, "torch_us": t, "ratio": t / o}
            ratios.append(t / o)
    for op, cells in rows.items():
        print(f"| {op} | " + " | ".join(f"{o:.1f} | {t:.1f} | {t / o:.2f}" for o, t in cells) + " |")
    med = statistics.median(ratios)
    slower = [(op, s, v["ratio"]) for op, r in results.items() for s, v in r.items() if v["ratio"] < 1]
    print(f"\nmedian ratio {med:.2f} over {len(ratios)} (op, shape) pairs; slower than torch: "
          + (", ".join(f"{op} {s} ({r:.2f})" for op, s, r in slower) or "none"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"level": cpu["level"], "torch": torch.__version__, "median_ratio": med,
                       "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
