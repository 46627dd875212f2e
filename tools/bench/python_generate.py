#!/usr/bin/env python3
"""qwen3vl.Model from Python vs the Rust CLI: per-token cost of `generate`, and `generate_batch` of 8
prompts vs 8 sequential `generate` calls.

    target/release/qwen3vl init-random --preset 2b --out /tmp/ckpt-2b    # if missing
    python3 tools/bench/python_generate.py --model /tmp/ckpt-2b --bin target/release/qwen3vl --threads 2

Per-token time = (T(n2) - T(n1)) / (n2 - n1) for greedy answers of n1 and n2 tokens (prefill, load and
process start cancel out), measured the same way for `m.generate` and for `qwen3vl generate`
(wall time of the process). overhead = python / cli - 1. Best of --reps runs each (neighbours only add
time). Batch: 8 different prompts, --batch-tokens each, greedy; throughput = generated tokens / wall time.
"""
import argparse
import subprocess
import sys
import time

import qwen3vl

PROMPT = "Write a long story about a lighthouse keeper."


def best(f, reps):
    return min(f() for _ in range(reps))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--bin", default="target/release/qwen3vl")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n1", type=int, default=4)
    ap.add_argument("--n2", type=int, default=36)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--batch-tokens", type=int, default=16)
    ap.add_argument("--skip-batch", action="store_true")
    a = ap.parse_args()

    m = qwen3vl.Model(a.model, threads=a.threads)

    def py_time(n):
        t = time.perf_counter()
        r = m.chat([{"role": "user", "content": PROMPT}], max_tokens=n, temperature=0)
        dt = time.perf_counter() - t
        assert r["usage"]["completion_tokens"] == n, "the answer stopped early (EOS); use other n1/n2"
        return dt

    def cli_time(n):
        t = time.perf_counter()
        subprocess.run([a.bin, "generate", "--model", a.model, "--threads", str(a.threads), "--prompt", PROMPT,
                        "--max-tokens", str(n), "--temperature", "0"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - t

    py_time(2)  # warm the page cache and the pools
    d = a.n2 - a.n1
    py = (best(lambda: py_time(a.n2), a.reps) - best(lambda: py_time(a.n1), a.reps)) / d
    cli = (best(lambda: cli_time(a.n2), a.reps) - best(lambda: cli_time(a.n1), a.reps)) / d
    print(f"per token: python {py * 1e3:.1f} ms, cli {cli * 1e3:.1f} ms, overhead {100 * (py / cli - 1):+.1f}% "
          f"({a.threads} threads, tokens {a.n1}->{a.n2}, best of {a.reps})")

    if a.skip_batch:
        return 0
    prompts = [f"{PROMPT} Chapter {i + 1}." for i in range(8)]
    t = time.perf_counter()
    seq = [m.generate(p, max_tokens=a.batch_tokens, temperature=0) for p in prompts]
    t_seq = time.perf_counter() - t
    t = time.perf_counter()
    bat = m.generate_batch(prompts, max_tokens=a.batch_tokens, temperature=0)
    t_bat = time.perf_counter() - t
    same = sum(x == y for x, y in zip(seq, bat))
    print(f"8 prompts x {a.batch_tokens} tokens: sequential {t_seq:.2f} s, generate_batch {t_bat:.2f} s, "
          f"throughput ratio {t_seq / t_bat:.2f}x ({same}/8 answers identical)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
