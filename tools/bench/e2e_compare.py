#!/usr/bin/env python3
"""Side-by-side table of `qwen3vl bench --json` and tools/bench/torch_e2e.py --json (markdown).

    qwen3vl bench --model DIR --threads 2 --json > ours.json
    python tools/bench/torch_e2e.py --model DIR --threads 2 --json > torch.json
    python tools/bench/e2e_compare.py ours.json torch.json [--ours-ttft-bin target/release/qwen3vl --model DIR]

Several files per side may be given as OURS1,OURS2 / TORCH1,TORCH2: each figure is the best over them
(highest throughput, lowest time) — runs on a shared machine are only ever slowed down by neighbours.

Ratios are "how many times faster ours is" (> 1 = ours faster): ours/torch for throughputs, torch/ours
for times and memory.

Time to first token: `qwen3vl bench` does not measure it. With --ours-ttft-bin the script measures it
with the real CLI: it writes the same synthetic image as a PNG and runs
`qwen3vl generate --model DIR --image IMG --prompt Q --max-tokens 1 --temperature 0 --threads N`;
TTFT = wall time of the process − the load time it reports ("load X s" on stderr). That includes
process start, PNG decode, preprocessing, vision, prefill and the first token — like torch_e2e's ttft_s,
which starts from the same PNG file. A `ttft_s` key already in ours.json is used as is.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

# (key, label, unit, higher_is_better, format)
ROWS = [
    ("decode_tok_s", "decode ({decode_tokens} tokens after {prefill_tokens})", "tok/s", True, "{:.2f}"),
    ("prefill_tok_s", "prefill ({prefill_tokens} tokens)", "tok/s", True, "{:.1f}"),
    ("vision_s", "vision encode ({image_size}, {image_tokens} tokens)", "s", False, "{:.2f}"),
    ("ttft_s", "time to first token (image + question)", "s", False, "{:.2f}"),
    ("load_s", "load", "s", False, "{:.2f}"),
    ("peak_rss_mib", "peak RSS", "MiB", False, "{:.0f}"),
]


def load_best(spec):
    """Merge one or more JSON reports (comma-separated paths) keeping the best of each figure."""
    reports = []
    for path in spec.split(","):
        with open(path) as f:
            text = f.read()
        # Tolerate log lines before the JSON object (e.g. a progress bar on stdout).
        start = text.find("{")
        if start < 0:
            raise SystemExit(f"{path}: no JSON object in the file")
        try:
            reports.append(json.loads(text[start:]))
        except json.JSONDecodeError as e:
            raise SystemExit(f"{path}: not a JSON report: {e}")
    merged = dict(reports[0])
    for key, _, _, higher, _ in ROWS:
        vals = [r[key] for r in reports if isinstance(r.get(key), (int, float)) and r[key] > 0]
        if vals:
            merged[key] = max(vals) if higher else min(vals)
    merged["_runs"] = len(reports)
    return merged


def synthetic_png(w, h, path):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torch_e2e import synthetic_image

    synthetic_image(w, h).save(path)


def measure_ours_ttft(binary, model, threads, w, h, question, repeats):
    """Best TTFT of `repeats` runs of `qwen3vl generate --max-tokens 1`: wall time − reported load time."""
    with tempfile.TemporaryDirectory() as d:
        img = os.path.join(d, "image.png")
        synthetic_png(w, h, img)
        cmd = [binary, "generate", "--model", model, "--image", img, "--prompt", question,
               "--max-tokens", "1", "--temperature", "0", "--threads", str(threads)]
        best = None
        for _ in range(repeats):
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if p.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
            m = re.search(r"load ([0-9.]+) s", p.stderr)
            if not m:
                raise SystemExit(f"no 'load X s' in the summary of qwen3vl generate: {p.stderr.strip()[-500:]}")
            ttft = wall - float(m.group(1))
            print(f"ours ttft run: wall {wall:.2f} s, {p.stderr.strip().splitlines()[-1]}", file=sys.stderr)
            best = ttft if best is None else min(best, ttft)
        return best


def fmt(fmtstr, v, unit):
    return f"{fmtstr.format(v)} {unit}" if isinstance(v, (int, float)) and v > 0 else "n/a"


def table(ours, torch_):
    ctx = {
        "decode_tokens": torch_.get("decode_tokens", ours.get("decode_tokens", "?")),
        "prefill_tokens": torch_.get("prefill_tokens", ours.get("prefill_tokens", "?")),
        "image_tokens": ours.get("image_tokens") or torch_.get("image_tokens", "?"),
        "image_size": "x".join(str(v) for v in torch_.get("image_size", ["?", "?"])),
    }
    for k in ("decode_tokens", "prefill_tokens"):
        if k in ours and k in torch_ and ours[k] != torch_[k]:
            print(f"warning: {k} differs: ours {ours[k]}, torch {torch_[k]}", file=sys.stderr)
    if ours.get("image_tokens") and torch_.get("image_tokens") and ours["image_tokens"] != torch_["image_tokens"]:
        print(f"warning: image_tokens differ: ours {ours['image_tokens']}, torch {torch_['image_tokens']}",
              file=sys.stderr)
    lines = [
        "| | qwen3vl | PyTorch | ours vs PyTorch |",
        "|---|---:|---:|---:|",
    ]
    for key, label, unit, higher, f in ROWS:
        o, t = ours.get(key), torch_.get(key)
        have = all(isinstance(v, (int, float)) and v > 0 for v in (o, t))
        ratio = (o / t if higher else t / o) if have else None
        r = f"**{ratio:.2f}x**" if ratio is not None else "n/a"
        lines.append(f"| {label.format(**ctx)} | {fmt(f, o, unit)} | {fmt(f, t, unit)} | {r} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ours", help="qwen3vl bench --json output (comma-separated for several runs)")
    ap.add_argument("torch", help="torch_e2e.py --json output (comma-separated for several runs)")
    ap.add_argument("--ours-ttft-bin", help="qwen3vl binary: measure our time to first token with `generate`")
    ap.add_argument("--model", help="checkpoint directory for --ours-ttft-bin")
    ap.add_argument("--threads", type=int, default=None, help="threads for --ours-ttft-bin (default: torch's)")
    ap.add_argument("--question", default="Describe this image in one sentence.")
    ap.add_argument("--ttft-repeats", type=int, default=2)
    ap.add_argument("--json-out", help="also write the merged figures and ratios as JSON here")
    args = ap.parse_args()
    ours, torch_ = load_best(args.ours), load_best(args.torch)
    if args.ours_ttft_bin:
        if not args.model:
            raise SystemExit("--ours-ttft-bin needs --model DIR")
        w, h = torch_.get("image_size", [640, 480])
        threads = args.threads or torch_.get("threads") or 2
        ours["ttft_s"] = measure_ours_ttft(args.ours_ttft_bin, args.model, threads, w, h, args.question,
                                           max(1, args.ttft_repeats))
    print(table(ours, torch_))
    la = torch_.get("loadavg_before")
    print()
    print(f"qwen3vl: {ours.get('isa', '?')}, {ours.get('threads', '?')} threads, precision "
          f"{ours.get('precision', '?')}, best of {ours['_runs']} run(s). PyTorch {torch_.get('torch', '?')}, "
          f"transformers {torch_.get('transformers', '?')}, {torch_.get('dtype', '?')} at {torch_.get('isa', '?')}, "
          f"{torch_.get('threads', '?')} threads, attn {torch_.get('attn_implementation', '?')}, "
          f"best of {torch_['_runs']} run(s)" + (f", load average {la[0]:.2f} before" if la else "") + ".")
    if args.json_out:
        out = {"ours": ours, "torch": torch_, "ratios": {}}
        for key, _, _, higher, _ in ROWS:
            o, t = ours.get(key), torch_.get(key)
            if all(isinstance(v, (int, float)) and v > 0 for v in (o, t)):
                out["ratios"][key] = o / t if higher else t / o
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
