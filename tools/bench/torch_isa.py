"""`--isa` for the PyTorch benchmarks: run torch at the SIMD level of a CPU without AVX-512.

On a machine with AVX-512 this measures what PyTorch does on an AVX2-only CPU (Zen 3, Intel client chips)
on the same cores, as `QWEN3VL_SIMD=avx2` does for us. torch's CPU work goes through three libraries,
each with its own switch, all read when torch is imported (so `apply` must run before `import torch`):
MKL (fp32 GEMM: `MKL_ENABLE_INSTRUCTIONS`), oneDNN (bf16 matmuls and convolutions:
`ONEDNN_MAX_CPU_ISA`) and ATen's own vectorized kernels (`ATEN_CPU_CAPABILITY`).
Caveat: on an Intel CPU MKL's AVX2 code is Intel's tuned path; on AMD it may take another one.
"""

import os

LEVELS = {
    "native": {},
    "avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}


def add_argument(ap):
    ap.add_argument("--isa", default="native", choices=sorted(LEVELS),
                    help="SIMD level torch may use (avx2: as on a CPU without AVX-512; see torch_isa.py)")


def apply(isa):
    """Sets the environment of `isa`; call before `import torch`."""
    if "torch" in __import__("sys").modules:
        raise SystemExit("torch_isa.apply must run before torch is imported")
    os.environ.update(LEVELS[isa])


def describe(torch):
    """The level torch runs at, for the report: ATen's capability (MKL and oneDNN follow --isa)."""
    return torch.backends.cpu.get_cpu_capability()
