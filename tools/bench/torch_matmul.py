#!/usr/bin/env python3
"""PyTorch's F.linear on the shapes of `qwen3vl bench matmul`, for a side-by-side comparison.

    python3 tools/bench/torch_matmul.py [--threads 2] [--json]

bf16: x and W in bf16 (PyTorch has no f32-activation x bf16-weight linear); f32: both f32. A GEMV is
timed over a round of copies of its weight totalling >= 160 MiB (so each call reads its weight from memory),
per call: the best round's average, as `bench matmul` does.
Times are the best of repeated runs (>= 5 runs and ~1 s per GEMV, 1.5 s per GEMM), like `bench matmul`.
"""
import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

SHAPES = [
    ("gemv", 1, 2048, 6144),
    ("gemv", 1, 2048, 2048),
    ("gemv", 1, 2048, 1024),
    ("gemv", 1, 2048, 151936),
    ("gemv", 1, 6144, 2048),
    ("gemm", 512, 2048, 6144),
    ("gemm", 512, 6144, 2048),
    ("gemm", 1200, 1024, 3072),
    ("gemm", 1200, 1024, 4096),
    ("gemm", 1200, 4096, 1024),
]
FOOTPRINT = 160 << 20


def best_time(fn, secs=0.5):
    fn()
    start = time.perf_counter()
    best, runs = float("inf"), 0
    while runs < 5 or time.perf_counter() - start < secs:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        runs += 1
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    if not args.json:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
        print(f"{'kind':<5} {'m':>5} {'k':>5} {'n':>7} {'dtype':>5} {'time µs':>10} {'GB/s':>8} {'GFLOP/s':>9}")
    with torch.inference_mode():
        for kind, m, k, n in SHAPES:
            for dtype, name in ((torch.bfloat16, "bf16"), (torch.float32, "f32")):
                elem = 2 if dtype == torch.bfloat16 else 4
                wbytes = n * k * elem
                copies = max(1, -(-FOOTPRINT // wbytes)) if kind == "gemv" else 1
                w0 = (torch.rand(n, k) - 0.5).to(dtype)
                ws = [w0.clone() for _ in range(copies)]
                del w0
                b = torch.rand(n).to(dtype)
                x = (torch.rand(m, k) - 0.5).to(dtype)

                def run():
                    for w in ws:
                        F.linear(x, w, b)

                t = best_time(run, 1.0 if kind == "gemv" else 1.5) / copies
                bytes_ = wbytes + (m * k + m * n + n) * elem
                gbps = bytes_ / t / 1e9
                gflops = 2.0 * m * n * k / t / 1e9
                results.append(dict(kind=kind, m=m, k=k, n=n, dtype=name, time_us=t * 1e6, gbps=gbps, gflops=gflops))
                if not args.json:
                    print(f"{kind:<5} {m:>5} {k:>5} {n:>7} {name:>5} {t*1e6:>10.1f} {gbps:>8.1f} {gflops:>9.1f}")
                del ws
    if args.json:
        print(json.dumps(dict(torch=torch.__version__, threads=args.threads, load=os.getloadavg()[0], results=results)))


if __name__ == "__main__":
    main()
