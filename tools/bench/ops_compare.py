#!/usr/bin/env python3
"""Markdown table of ours vs torch per op and shape from the JSON of examples/ops_table.rs and
tools/bench/torch_ops.py. ratio = torch time / our time (> 1: we are faster).

    python3 tools/bench/ops_compare.py ours.json torch.json
    python3 tools/bench/ops_compare.py ours1.json,ours2.json torch1.json,torch2.json   # best of runs
"""
import json
import statistics
import sys


def load(arg):
    """One JSON, or several (comma-separated) merged by taking each entry's minimum."""
    docs = [json.load(open(p)) for p in arg.split(",")]
    out = dict(docs[0])
    out["results"] = {}
    for d in docs:
        for op, row in d["results"].items():
            for s, v in row.items():
                cur = out["results"].setdefault(op, {}).get(s)
                out["results"][op][s] = v if cur is None else min(cur, v)
    out["runs"] = len(docs)
    return out


def main():
    ours = load(sys.argv[1])
    torch = load(sys.argv[2])
    shapes = ["4x32x512", "2048", "512x2048", "1200x1024"]
    print(f"ours: {ours.get('isa', '?')}, 1 thread; torch {torch.get('version', '?')} eager, "
          f"{torch.get('threads', '?')} thread. Times in µs (best of 11 samples x {ours['runs']} runs); ratio = torch / ours.\n")
    print("| op | " + " | ".join(f"{s} ours | torch | ratio" for s in shapes) + " |")
    print("|---|" + "---:|---:|---:|" * len(shapes))
    ratios, slower = [], []
    for op, row in ours["results"].items():
        cells = []
        for s in shapes:
            o, t = row.get(s), torch["results"].get(op, {}).get(s)
            if o is None or t is None:
                cells.append("– | – | –")
                continue
            r = t / o
            ratios.append(r)
            if r < 1.0:
                slower.append(f"{op} {s} ({r:.2f}x)")
            cells.append(f"{o:.1f} | {t:.1f} | {'**' if r < 1 else ''}{r:.2f}x{'**' if r < 1 else ''}")
        print(f"| {op} | " + " | ".join(cells) + " |")
    if ratios:
        print(f"\nmedian ratio {statistics.median(ratios):.2f}x over {len(ratios)} op/shape pairs; "
              f"min {min(ratios):.2f}x, max {max(ratios):.2f}x.")
        print("slower than torch: " + (", ".join(slower) if slower else "none"))


if __name__ == "__main__":
    main()
