#!/usr/bin/env python3
"""Markdown table of ours vs torch per op and shape from the JSON of examples/ops_table.rs and
tools/bench/torch_ops.py. ratio = torch time / our time (> 1: we are faster).

    python3 tools/bench/ops_compare.py ours.json torch.json
"""
import json
import statistics
import sys


def main():
    ours = json.load(open(sys.argv[1]))
    torch = json.load(open(sys.argv[2]))
    shapes = ["4x32x512", "2048", "512x2048", "1200x1024"]
    print(f"ours: {ours.get('isa', '?')}, 1 thread; torch {torch.get('version', '?')} eager, "
          f"{torch.get('threads', '?')} thread. Times in µs (best of 11 samples); ratio = torch / ours.\n")
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
