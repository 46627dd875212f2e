"""The vectorized kernels of qwen3vl and their backward passes, on float32 numpy arrays.

Every op takes arrays of any leading shape; the last axis is the row (normalized, softmaxed, or the
features of a matmul). Inputs must be float32 (a matmul weight may also be bf16 bits as uint16, see
``to_bf16``): another dtype raises TypeError. Non-contiguous inputs are copied; outputs are new arrays.
The GIL is released while a kernel runs. Backward functions return the gradients of the inputs given the
upstream gradient ``dy`` (weight/bias gradients summed over all rows).

The SIMD level is chosen once (the best this CPU has, or ``QWEN3VL_SIMD``); change it with
``qwen3vl.set_simd`` and the thread count with ``qwen3vl.set_threads``.
"""
from ._native import ops as _ops

__all__ = [
    "normalize", "normalize_backward",
    "layer_norm", "layer_norm_backward",
    "rms_norm", "rms_norm_backward",
    "softmax", "softmax_backward",
    "gelu_tanh", "gelu_tanh_backward",
    "gelu_erf", "gelu_erf_backward",
    "silu", "silu_backward",
    "relu", "relu_backward",
    "swiglu", "swiglu_backward",
    "matmul", "matmul_backward",
    "to_bf16", "from_bf16",
]

normalize = _ops.normalize
normalize_backward = _ops.normalize_backward
layer_norm = _ops.layer_norm
layer_norm_backward = _ops.layer_norm_backward
rms_norm = _ops.rms_norm
rms_norm_backward = _ops.rms_norm_backward
softmax = _ops.softmax
softmax_backward = _ops.softmax_backward
gelu_tanh = _ops.gelu_tanh
gelu_tanh_backward = _ops.gelu_tanh_backward
gelu_erf = _ops.gelu_erf
gelu_erf_backward = _ops.gelu_erf_backward
silu = _ops.silu
silu_backward = _ops.silu_backward
relu = _ops.relu
relu_backward = _ops.relu_backward
swiglu = _ops.swiglu
swiglu_backward = _ops.swiglu_backward
matmul = _ops.matmul
matmul_backward = _ops.matmul_backward
to_bf16 = _ops.to_bf16
from_bf16 = _ops.from_bf16
