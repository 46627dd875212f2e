#!/usr/bin/env python3
"""Times torch eager (CPU, one thread) on the vector ops and shapes of
crates/kernels/examples/ops_table.rs and writes JSON {"results": {op: {shape: best_us}}}.

    python3 tools/bench/torch_ops.py [out.json]

Shapes: "4x32x512" (128 rows of 512), "2048" (one row), "512x2048", "1200x1024"; row-wise ops work on
the last dimension, elementwise ops on the whole tensor. Where torch has an `out=` form it is used, so
torch is not charged for allocating its result; composite ops (swiglu, rope, rms_norm backward) are timed
as a user writes them in eager PyTorch (HF's rotate_half RoPE, silu(g) * u).
"""
import json
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(1)
torch.manual_seed(0)
aten = torch.ops.aten

SHAPES = [("4x32x512", (4, 32, 512)), ("2048", (2048,)), ("512x2048", (512, 2048)), ("1200x1024", (1200, 1024))]


def time_us(f):
    """Fastest of 11 samples (each >= ~2 ms) of the time per call, in microseconds (the minimum: the machine
    is shared and neighbours only ever add time)."""
    f()
    t = time.perf_counter()
    f()
    once = max(time.perf_counter() - t, 1e-7)
    reps = max(1, min(100000, int(2e-3 / once + 0.999)))
    samples = []
    for _ in range(11):
        t = time.perf_counter()
        for _ in range(reps):
            f()
        samples.append((time.perf_counter() - t) / reps * 1e6)
    samples.sort()
    return samples[0]


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else None
    res = {}

    def put(op, shape, us):
        print(f"{op:>22} {shape:>10} {us:>10.2f} us", file=sys.stderr)
        res.setdefault(op, {})[shape] = us

    for name, shape in SHAPES:
        n = shape[-1]
        a = torch.rand(shape) * 8 - 4
        b = torch.rand(shape) * 8 - 4
        w = torch.rand(n) + 0.5
        bias = torch.rand(n) * 2 - 1
        o = torch.empty(shape)
        h = a.to(torch.bfloat16)
        hb = torch.empty(shape, dtype=torch.bfloat16)
        a1, b1 = a.reshape(-1), b.reshape(-1)
        put("add", name, time_us(lambda: torch.add(a, b, out=o)))
        put("mul", name, time_us(lambda: torch.mul(a, b, out=o)))
        put("scale", name, time_us(lambda: torch.mul(a, 0.5, out=o)))
        put("dot", name, time_us(lambda: torch.dot(a1, b1)))
        put("sum", name, time_us(lambda: torch.sum(a)))
        put("max", name, time_us(lambda: torch.max(a)))
        put("f32_to_bf16", name, time_us(lambda: hb.copy_(a)))
        put("bf16_to_f32", name, time_us(lambda: o.copy_(h)))
        put("round_bf16", name, time_us(lambda: o.copy_(hb.copy_(a))))
        put("rms_norm", name, time_us(lambda: F.rms_norm(a, (n,), w, 1e-6)))
        put("layer_norm", name, time_us(lambda: F.layer_norm(a, (n,), w, bias, 1e-6)))
        put("normalize", name, time_us(lambda: F.normalize(a, dim=-1)))
        put("softmax", name, time_us(lambda: aten._softmax.out(a, -1, False, out=o)))
        put("gelu_tanh", name, time_us(lambda: aten.gelu.out(a, approximate="tanh", out=o)))
        put("gelu_erf", name, time_us(lambda: aten.gelu.out(a, out=o)))
        put("silu", name, time_us(lambda: aten.silu.out(a, out=o)))
        put("relu", name, time_us(lambda: torch.clamp_min(a, 0.0, out=o)))
        put("swiglu", name, time_us(lambda: torch.mul(F.silu(a), b, out=o)))
        # RoPE: (rows, heads, 128) with cos/sin (rows, 1, 128) as HF builds them (duplicated halves)
        rows = a.numel() // n
        x = a.reshape(rows, n // 128, 128)
        ang = torch.rand(rows, 1, 64)
        cos = torch.cat((ang.cos(), ang.cos()), -1)
        sin = torch.cat((ang.sin(), ang.sin()), -1)
        put("rope_half", name, time_us(lambda: (x * cos) + (rotate_half(x) * sin)))
        # backward (aten backward kernels, out= where available)
        put("gelu_tanh_backward", name, time_us(lambda: aten.gelu_backward.grad_input(b, a, approximate="tanh", grad_input=o)))
        put("gelu_erf_backward", name, time_us(lambda: aten.gelu_backward.grad_input(b, a, grad_input=o)))
        put("silu_backward", name, time_us(lambda: aten.silu_backward.grad_input(b, a, grad_input=o)))
        put("relu_backward", name, time_us(lambda: aten.threshold_backward.grad_input(b, a, 0.0, grad_input=o)))

        def swiglu_bwd():
            s = F.silu(a)
            dup = b * s
            dgate = aten.silu_backward(b * b, a)
            return dgate, dup

        put("swiglu_backward", name, time_us(swiglu_bwd))
        y = torch.softmax(a, -1)
        put("softmax_backward", name, time_us(lambda: aten._softmax_backward_data.out(b, y, -1, torch.float32, grad_input=o)))
        xr = a.reshape(-1, n).clone().requires_grad_(True)
        wr = w.clone().requires_grad_(True)
        dyr = b.reshape(-1, n)

        def rms_bwd():
            y = F.rms_norm(xr, (n,), wr, 1e-6)
            return torch.autograd.grad(y, (xr, wr), dyr)

        put("rms_norm_backward", name, time_us(rms_bwd))
        x2 = a.reshape(-1, n)
        _, mean, rstd = aten.native_layer_norm(x2, (n,), w, bias, 1e-6)
        put("layer_norm_backward", name, time_us(
            lambda: aten.native_layer_norm_backward(dyr, x2, (n,), mean, rstd, w, bias, [True, True, True])))

    doc = {"engine": "torch", "version": torch.__version__, "threads": torch.get_num_threads(), "results": res}
    text = json.dumps(doc, indent=2)
    if out_path:
        with open(out_path, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
