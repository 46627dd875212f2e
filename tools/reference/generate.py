#!/usr/bin/env python3
"""Regenerate all reference data under testdata/ (deterministic: fixed seeds, no timestamps).

    python3 tools/reference/generate.py            # everything
    python3 tools/reference/generate.py processor  # only the named case modules

Runs every case module in this folder: processor_cases.py, model_cases.py (if present), and any other
`*_cases.py` / `cases_*.py`, each through its `main(out_dir)`.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402


def case_modules() -> list[str]:
    names = {p.stem for p in HERE.glob("*_cases.py")} | {p.stem for p in HERE.glob("cases_*.py")}
    # processor first (others may use its processor directory), then the rest alphabetically.
    return sorted(names, key=lambda n: (n != "processor_cases", n))


def main(argv: list[str]) -> None:
    wanted = set(argv)
    for name in case_modules():
        short = name.removesuffix("_cases").removeprefix("cases_")
        if wanted and short not in wanted and name not in wanted:
            continue
        common.seed_everything(0)
        mod = importlib.import_module(name)
        print(f"== {name}")
        mod.main(common.TESTDATA)


if __name__ == "__main__":
    main(sys.argv[1:])
