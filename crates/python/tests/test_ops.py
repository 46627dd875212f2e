"""qwen3vl.ops against float64 numpy references (forward), against finite differences of those
references (backward), at every SIMD level this CPU has; and the bad-input errors.

Bounds (float32 kernels vs float64 math): forward 2e-6 relative + 2e-6·max|y| absolute for the
elementwise and row-wise ops; backward 1e-4 relative + 1e-5·max|g| absolute against central differences
(h = 1e-6 in float64 on the reference forward); matmul 2(k+2)·2⁻²⁴·Σ|x·w| per output."""
import math

import numpy as np
import pytest

import qwen3vl
from qwen3vl import ops

SHAPES = [(0,), (1,), (15,), (3, 17), (2, 3, 33), (4, 1023)]
LEVELS = qwen3vl.cpu()["available"]


@pytest.fixture(autouse=True)
def restore_level():
    level = qwen3vl.cpu()["level"]
    yield
    qwen3vl.set_simd(level)


def rng(seed=0):
    return np.random.default_rng(seed)


# float64 references --------------------------------------------------------------------------------------
def erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x)


REF = {
    "gelu_tanh": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "gelu_erf": lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2))),
    "silu": lambda x: x / (1 + np.exp(-x)),
    "relu": lambda x: np.maximum(x, 0),
}


def rms_ref(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def ln_ref(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


def softmax_ref(x):
    if x.size == 0:
        return x.copy()
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def normalize_ref(x, eps):
    return x / np.maximum(np.sqrt((x * x).sum(-1, keepdims=True)), eps)


def close(got, want, name, rel=2e-6, abs_frac=2e-6):
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, name
    assert got.dtype == np.float32, name
    if want.size == 0:
        return
    tol = rel * np.abs(want) + abs_frac * max(np.abs(want).max(), 1e-30)
    err = np.abs(got.astype(np.float64) - want)
    i = np.unravel_index(np.argmax(err / tol), want.shape)
    assert (err <= tol).all(), f"{name}: worst at {i}: got {got[i]!r}, want {want[i]!r} (tol {tol[i]:.3g})"


def fd_grad(f, x, dy, h=1e-6):
    """Central-difference gradient of sum(dy * f(x)) at x (float64)."""
    g = np.zeros_like(x)
    flat, gf = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        up = (dy * f(x)).sum()
        flat[i] = old - h
        down = (dy * f(x)).sum()
        flat[i] = old
        gf[i] = (up - down) / (2 * h)
    return g


# forward -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_float64_reference(level, shape):
    qwen3vl.set_simd(level)
    r = rng(hash(shape) % 1000)
    x = (r.standard_normal(shape) * 3).astype(np.float32)
    x64 = x.astype(np.float64)
    for name, f in REF.items():
        close(getattr(ops, name)(x), f(x64), f"{name} [{level}] {shape}", rel=4e-6)
    gate, up = x, (r.standard_normal(shape)).astype(np.float32)
    close(ops.swiglu(gate, up), REF["silu"](x64) * up, f"swiglu [{level}] {shape}", rel=4e-6)
    n = shape[-1]
    w = r.standard_normal(n).astype(np.float32)
    b = r.standard_normal(n).astype(np.float32)
    close(ops.rms_norm(x, w, 1e-6), rms_ref(x64, w, 1e-6), f"rms_norm [{level}] {shape}")
    close(ops.layer_norm(x, w, b, 1e-5), ln_ref(x64, w, b, 1e-5), f"layer_norm [{level}] {shape}")
    close(ops.softmax(x), softmax_ref(x64), f"softmax [{level}] {shape}")
    close(ops.normalize(x), normalize_ref(x64, 1e-12), f"normalize [{level}] {shape}")


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("mnk", [(1, 1, 1), (3, 5, 17), (2, 70, 33), (16, 9, 1023), (4, 0, 8)])
def test_matmul_matches_float64_reference(level, mnk):
    qwen3vl.set_simd(level)
    m, n, k = mnk
    r = rng(1)
    x = r.standard_normal((2, m, k)).astype(np.float32)
    w = r.standard_normal((n, k)).astype(np.float32)
    b = r.standard_normal(n).astype(np.float32)
    want = x.astype(np.float64) @ w.T.astype(np.float64) + b
    s = np.abs(x).astype(np.float64) @ np.abs(w.T).astype(np.float64) + np.abs(b)
    got = ops.matmul(x, w, b)
    assert got.shape == (2, m, n)
    assert (np.abs(got - want) <= 2 * (k + 2) * 2.0**-24 * s + 1e-30).all()
    # bf16 weights: exactly the f32 matmul on the widened weights.
    wb = ops.to_bf16(w)
    assert wb.dtype == np.uint16
    w_wide = ops.from_bf16(wb)
    assert (np.abs(w_wide - w) <= np.abs(w) * 2.0**-8).all()
    np.testing.assert_allclose(ops.matmul(x, wb), ops.matmul(x, w_wide), rtol=1e-5, atol=1e-5 * max(k, 1))


# backward ------------------------------------------------------------------------------------------------
def grad_close(got, want, name, floor=0.0):
    """floor: an absolute tolerance for gradients that are exactly 0 (e.g. normalize of a 1-element row)
    where float32 cancellation leaves ~2⁻²⁴ of the terms' size."""
    want = np.asarray(want, np.float64)
    if want.size and np.abs(want).max() < floor:
        assert np.abs(got).max() <= floor, name
        return
    close(got, want, name, rel=1e-4, abs_frac=1e-5)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("shape", [(1,), (3, 17), (2, 2, 9)])
def test_backward_matches_finite_differences(level, shape):
    qwen3vl.set_simd(level)
    r = rng(7)
    x = (r.standard_normal(shape) * 2).astype(np.float32)
    x64 = x.astype(np.float64)
    dy = r.standard_normal(shape).astype(np.float32)
    dy64 = dy.astype(np.float64)
    for name, f in REF.items():
        if name == "relu":
            x_ = np.where(np.abs(x) < 1e-3, 0.5, x).astype(np.float32)  # away from the kink
        else:
            x_ = x
        got = getattr(ops, name + "_backward")(x_, dy)
        grad_close(got, fd_grad(f, x_.astype(np.float64), dy64), f"{name}_backward [{level}] {shape}")
    up = r.standard_normal(shape).astype(np.float32)
    dg, du = ops.swiglu_backward(x, up, dy)
    grad_close(dg, fd_grad(lambda g: REF["silu"](g) * up, x64.copy(), dy64), f"swiglu dgate [{level}]")
    grad_close(du, fd_grad(lambda u: REF["silu"](x64) * u, up.astype(np.float64), dy64), f"swiglu dup [{level}]")
    n = shape[-1]
    w = (1 + 0.1 * r.standard_normal(n)).astype(np.float32)
    b = r.standard_normal(n).astype(np.float32)
    w64 = w.astype(np.float64)
    dx, dw = ops.rms_norm_backward(x, w, dy, 1e-6)
    grad_close(dx, fd_grad(lambda v: rms_ref(v, w64, 1e-6), x64.copy(), dy64), f"rms_norm dx [{level}] {shape}")
    grad_close(dw, fd_grad(lambda v: rms_ref(x64, v, 1e-6), w64.copy(), dy64), f"rms_norm dw [{level}] {shape}")
    if n > 1:  # a row of one element has a zero-variance layer norm
        dx, dw, db = ops.layer_norm_backward(x, w, dy, 1e-5)
        grad_close(dx, fd_grad(lambda v: ln_ref(v, w64, b, 1e-5), x64.copy(), dy64), f"layer_norm dx [{level}]")
        grad_close(dw, fd_grad(lambda v: ln_ref(x64, v, b, 1e-5), w64.copy(), dy64), f"layer_norm dw [{level}]")
        grad_close(db, fd_grad(lambda v: ln_ref(x64, w64, v, 1e-5), b.astype(np.float64), dy64),
                   f"layer_norm db [{level}]")
    y = ops.softmax(x)
    grad_close(ops.softmax_backward(y, dy), fd_grad(softmax_ref, x64.copy(), dy64), f"softmax [{level}] {shape}")
    grad_close(ops.normalize_backward(x, dy), fd_grad(lambda v: normalize_ref(v, 1e-12), x64.copy(), dy64),
               f"normalize [{level}] {shape}", floor=1e-5 * np.abs(dy).max() / np.abs(x).min())
    # matmul: x (.., n) -> (.., 5)
    wm = r.standard_normal((5, n)).astype(np.float32)
    bm = r.standard_normal(5).astype(np.float32)
    dym = r.standard_normal(shape[:-1] + (5,)).astype(np.float32)
    dym64 = dym.astype(np.float64)
    dx, dw, db = ops.matmul_backward(x, wm, dym, bias=True)
    mm = lambda xv, wv, bv: xv @ wv.T + bv  # noqa: E731
    wm64, bm64 = wm.astype(np.float64), bm.astype(np.float64)
    grad_close(dx, fd_grad(lambda v: mm(v, wm64, bm64), x64.copy(), dym64), f"matmul dx [{level}]")
    grad_close(dw, fd_grad(lambda v: mm(x64, v, bm64), wm64.copy(), dym64), f"matmul dw [{level}]")
    grad_close(db, fd_grad(lambda v: mm(x64, wm64, v), bm64.copy(), dym64), f"matmul db [{level}]")
    assert ops.matmul_backward(x, wm, dym)[2] is None


def test_levels_agree_with_scalar():
    """Every SIMD level against the scalar twin on the same input (a few ULP)."""
    r = rng(3)
    x = (r.standard_normal((5, 1023)) * 3).astype(np.float32)
    dy = r.standard_normal(x.shape).astype(np.float32)
    w = r.standard_normal(1023).astype(np.float32)
    run = lambda: [ops.gelu_tanh(x), ops.silu(x), ops.softmax(x), ops.rms_norm(x, w),  # noqa: E731
                   ops.gelu_erf_backward(x, dy), ops.rms_norm_backward(x, w, dy)[0]]
    qwen3vl.set_simd("scalar")
    ref = run()
    for level in LEVELS:
        qwen3vl.set_simd(level)
        for a, b in zip(run(), ref):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6 * np.abs(b).max(), err_msg=level)


# input handling ------------------------------------------------------------------------------------------
def test_non_contiguous_inputs_are_copied():
    r = rng(4)
    base = r.standard_normal((64, 48)).astype(np.float32)
    xt = base.T  # (48, 64), Fortran order
    assert not xt.flags.c_contiguous
    np.testing.assert_array_equal(ops.softmax(xt), ops.softmax(np.ascontiguousarray(xt)))
    strided = base[:, ::2]
    w = np.ones(24, np.float32)
    np.testing.assert_array_equal(ops.rms_norm(strided, w), ops.rms_norm(strided.copy(), w))
    np.testing.assert_array_equal(ops.silu(base[::3]), ops.silu(base[::3].copy()))
    wt = r.standard_normal((48, 7)).astype(np.float32).T  # (7, 48) non-contiguous weight
    np.testing.assert_array_equal(ops.matmul(base, wt), ops.matmul(base, wt.copy()))


def test_wrong_dtype_is_a_type_error():
    x64 = np.zeros((2, 8))
    with pytest.raises(TypeError, match="x: expected a float32 array, got dtype float64"):
        ops.silu(x64)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        ops.softmax([1.0, 2.0])
    with pytest.raises(TypeError, match="weight"):
        ops.rms_norm(np.zeros((2, 8), np.float32), np.ones(8, np.float64))
    with pytest.raises(TypeError, match="bf16"):
        ops.matmul(np.zeros((2, 8), np.float32), np.ones((3, 8), np.int32))


def test_wrong_shape_is_a_value_error():
    x = np.zeros((2, 8), np.float32)
    with pytest.raises(ValueError, match=r"weight: shape \[7\], expected \(8,\)"):
        ops.rms_norm(x, np.ones(7, np.float32))
    with pytest.raises(ValueError, match="bias"):
        ops.layer_norm(x, np.ones(8, np.float32), np.ones((1, 8), np.float32))
    with pytest.raises(ValueError, match="dy: shape"):
        ops.silu_backward(x, np.zeros((8, 2), np.float32))
    with pytest.raises(ValueError, match="up: shape"):
        ops.swiglu(x, np.zeros(16, np.float32))
    with pytest.raises(ValueError, match="0-d"):
        ops.softmax(np.ones((), np.float32))
    with pytest.raises(ValueError, match=r"weight: shape \[3, 7\]"):
        ops.matmul(x, np.ones((3, 7), np.float32))


def test_cpu_and_set_simd():
    c = qwen3vl.cpu()
    assert c["level"] in c["available"] and "scalar" in c["available"]
    assert c["best"] == c["available"][-1]
    qwen3vl.set_simd("scalar")
    assert qwen3vl.cpu()["level"] == "scalar"
    with pytest.raises(ValueError, match="expected one of"):
        qwen3vl.set_simd("neon9")
    if "avx512" not in c["available"]:
        with pytest.raises(ValueError, match="avx512"):
            qwen3vl.set_simd("avx512")
    qwen3vl.set_threads(1)
    assert qwen3vl.cpu()["threads"] == 1
    with pytest.raises(ValueError):
        qwen3vl.set_threads(0)
