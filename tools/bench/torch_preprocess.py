#!/usr/bin/env python3
"""transformers' Qwen3-VL image preprocessing of the 1365x2048 reference JPEG, one torch thread:
decode (PIL open + load + EXIF transpose) + processor (convert, resize, normalize, patchify).
Counterpart of `cargo bench -p qwen3vl-processor --bench preprocess`.

    python3 tools/bench/torch_preprocess.py [--iters 30]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "reference"))

import torch  # noqa: E402

import common  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    proc = common.load_processor()
    path = common.TESTDATA / "processor" / "images" / "rgb_1365x2048.jpg"

    def decode():
        return common.open_image(path)

    def full():
        return proc.image_processor(images=[decode()], return_tensors="pt")

    img = decode()

    def no_decode():
        return proc.image_processor(images=[img], return_tensors="pt")

    for name, fn in [("full", full), ("resize_normalize_patchify", no_decode), ("decode", decode)]:
        for _ in range(3):
            fn()
        times = []
        for _ in range(args.iters):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        print(f"{name:28s} median {statistics.median(times) * 1e3:8.2f} ms   min {min(times) * 1e3:8.2f} ms  ({args.iters} iters, 1 thread)")


if __name__ == "__main__":
    main()
