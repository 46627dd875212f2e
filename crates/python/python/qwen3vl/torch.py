"""torch autograd wrappers whose forward and backward are qwen3vl's SIMD kernels.

    import torch, qwen3vl.torch as qt
    norm = qt.RMSNorm(512)
    y = norm(torch.randn(4, 32, 512, requires_grad=True)); y.sum().backward()

The kernels compute in float32 (on CPU tensors; the normalized / softmaxed axis is the last one, as in the
ops). Other floating dtypes are accepted: inputs are converted to float32 for the kernels and results
converted back to the input's dtype. With float64 inputs (the form `torch.autograd.gradcheck` needs), the
computation is still float32 inside, so gradcheck runs with eps and tolerances sized for float32 rounding
(see tests/test_torch.py: eps=1e-3, atol=1e-3, rtol=1e-2). Compared with torch's own float32 ops, forward
results agree within 1e-5 relative + 1e-6 absolute, gradients within 1e-4 relative + 1e-5 absolute.
Backward passes are first-order only (no double backward).
"""
import numpy as np
import torch

from . import ops as _ops

__all__ = [
    "rms_norm", "layer_norm", "normalize", "softmax", "gelu", "silu", "relu", "swiglu", "linear",
    "RMSNorm", "LayerNorm", "GELU", "SiLU", "ReLU", "Softmax",
]


def _np(t):
    """A float32 C-contiguous numpy view (or copy) of a tensor."""
    return np.ascontiguousarray(t.detach().to(device="cpu", dtype=torch.float32).numpy())


def _t(a, like):
    return torch.from_numpy(a).to(dtype=like.dtype, device=like.device)


def _check(name, t):
    if not torch.is_tensor(t):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")


class _Unary(torch.autograd.Function):
    """y = f(x) elementwise, dx = f'(x)·dy; subclasses set `fwd` and `bwd` (ops functions)."""

    fwd = bwd = None

    @classmethod
    def forward(cls, ctx, x):
        _check("x", x)
        ctx.save_for_backward(x)
        return _t(cls.fwd(_np(x)), x)

    @classmethod
    def backward(cls, ctx, dy):
        (x,) = ctx.saved_tensors
        return _t(cls.bwd(_np(x), _np(dy)), x)


class GeluTanhFn(_Unary):
    fwd, bwd = staticmethod(_ops.gelu_tanh), staticmethod(_ops.gelu_tanh_backward)


class GeluErfFn(_Unary):
    fwd, bwd = staticmethod(_ops.gelu_erf), staticmethod(_ops.gelu_erf_backward)


class SiLUFn(_Unary):
    fwd, bwd = staticmethod(_ops.silu), staticmethod(_ops.silu_backward)


class ReLUFn(_Unary):
    fwd, bwd = staticmethod(_ops.relu), staticmethod(_ops.relu_backward)


class SoftmaxFn(torch.autograd.Function):
    """softmax over the last axis."""

    @staticmethod
    def forward(ctx, x):
        _check("x", x)
        y = _ops.softmax(_np(x))
        ctx.save_for_backward(torch.from_numpy(y))
        return _t(y, x)

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        return _t(_ops.softmax_backward(y.numpy(), _np(dy)), dy)


class NormalizeFn(torch.autograd.Function):
    """x / max(‖x‖₂, eps) over the last axis."""

    @staticmethod
    def forward(ctx, x, eps):
        _check("x", x)
        ctx.save_for_backward(x)
        ctx.eps = eps
        return _t(_ops.normalize(_np(x), eps), x)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        return _t(_ops.normalize_backward(_np(x), _np(dy), ctx.eps), x), None


class RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        _check("x", x)
        _check("weight", weight)
        ctx.save_for_backward(x, weight)
        ctx.eps = eps
        return _t(_ops.rms_norm(_np(x), _np(weight), eps), x)

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dx, dw = _ops.rms_norm_backward(_np(x), _np(w), _np(dy), ctx.eps)
        return _t(dx, x), _t(dw, w), None


class LayerNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        _check("x", x)
        _check("weight", weight)
        _check("bias", bias)
        ctx.save_for_backward(x, weight, bias)
        ctx.eps = eps
        return _t(_ops.layer_norm(_np(x), _np(weight), _np(bias), eps), x)

    @staticmethod
    def backward(ctx, dy):
        x, w, b = ctx.saved_tensors
        dx, dw, db = _ops.layer_norm_backward(_np(x), _np(w), _np(dy), ctx.eps)
        return _t(dx, x), _t(dw, w), _t(db, b), None


class SwiGLUFn(torch.autograd.Function):
    """silu(gate)·up."""

    @staticmethod
    def forward(ctx, gate, up):
        _check("gate", gate)
        _check("up", up)
        ctx.save_for_backward(gate, up)
        return _t(_ops.swiglu(_np(gate), _np(up)), gate)

    @staticmethod
    def backward(ctx, dy):
        g, u = ctx.saved_tensors
        dg, du = _ops.swiglu_backward(_np(g), _np(u), _np(dy))
        return _t(dg, g), _t(du, u)


class LinearFn(torch.autograd.Function):
    """x · weightᵀ + bias (weight (out, in), as nn.Linear)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        _check("x", x)
        _check("weight", weight)
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _t(_ops.matmul(_np(x), _np(weight), None if bias is None else _np(bias)), x)

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dx, dw, db = _ops.matmul_backward(_np(x), _np(w), _np(dy), ctx.has_bias)
        return _t(dx, x), _t(dw, w), (None if db is None else _t(db, w))


def rms_norm(x, weight, eps=1e-6):
    return RMSNormFn.apply(x, weight, eps)


def layer_norm(x, weight, bias, eps=1e-5):
    return LayerNormFn.apply(x, weight, bias, eps)


def normalize(x, eps=1e-12):
    return NormalizeFn.apply(x, eps)


def softmax(x, dim=-1):
    if dim in (-1, x.dim() - 1):
        return SoftmaxFn.apply(x)
    return SoftmaxFn.apply(x.movedim(dim, -1)).movedim(-1, dim)


def gelu(x, approximate="none"):
    if approximate == "none":
        return GeluErfFn.apply(x)
    if approximate == "tanh":
        return GeluTanhFn.apply(x)
    raise ValueError(f"approximate={approximate!r}: expected 'none' or 'tanh'")


def silu(x):
    return SiLUFn.apply(x)


def relu(x):
    return ReLUFn.apply(x)


def swiglu(gate, up):
    return SwiGLUFn.apply(gate, up)


def linear(x, weight, bias=None):
    return LinearFn.apply(x, weight, bias)


class RMSNorm(torch.nn.Module):
    """torch.nn.RMSNorm over the last axis (weight initialised to ones)."""

    def __init__(self, dim, eps=1e-6, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(dim, dtype=dtype or torch.float32))

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


class LayerNorm(torch.nn.Module):
    """torch.nn.LayerNorm over the last axis (weight ones, bias zeros)."""

    def __init__(self, dim, eps=1e-5, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(dim, dtype=dtype or torch.float32))
        self.bias = torch.nn.Parameter(torch.zeros(dim, dtype=dtype or torch.float32))

    def forward(self, x):
        return layer_norm(x, self.weight, self.bias, self.eps)


class GELU(torch.nn.Module):
    """torch.nn.GELU (approximate='none' or 'tanh')."""

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate={approximate!r}: expected 'none' or 'tanh'")
        self.approximate = approximate

    def forward(self, x):
        return gelu(x, self.approximate)


class SiLU(torch.nn.Module):
    def forward(self, x):
        return silu(x)


class ReLU(torch.nn.Module):
    def forward(self, x):
        return relu(x)


class Softmax(torch.nn.Module):
    """torch.nn.Softmax(dim)."""

    def __init__(self, dim=-1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return softmax(x, self.dim)
