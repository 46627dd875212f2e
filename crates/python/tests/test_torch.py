"""qwen3vl.torch: autograd through our kernels equals torch's own ops, and gradcheck passes.

gradcheck (float64 reference form): the inputs are float64 tensors; each Function converts them to
float32 for our kernels and converts the results back, so the analytic Jacobian (our backward) is
compared with finite differences of our float32 forward using eps=1e-3 and atol=1e-3, rtol=1e-2 —
sized for float32 rounding (relative 6e-8 per value, amplified by 1/eps in the numerical Jacobian).

float32 against torch's ops: forward within 1e-5 relative + 1e-6 absolute (1e-5 absolute for the norms),
gradients within 1e-4 relative + 1e-5 absolute."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import qwen3vl.torch as qt  # noqa: E402

torch.manual_seed(0)


def _pairs():
    return [
        ("RMSNorm", lambda: qt.RMSNorm(33), lambda: torch.nn.RMSNorm(33, eps=1e-6)),
        ("LayerNorm", lambda: qt.LayerNorm(33), lambda: torch.nn.LayerNorm(33, eps=1e-5)),
        ("GELU", lambda: qt.GELU(), lambda: torch.nn.GELU()),
        ("GELU-tanh", lambda: qt.GELU("tanh"), lambda: torch.nn.GELU(approximate="tanh")),
        ("SiLU", lambda: qt.SiLU(), lambda: torch.nn.SiLU()),
        ("ReLU", lambda: qt.ReLU(), lambda: torch.nn.ReLU()),
        ("Softmax", lambda: qt.Softmax(-1), lambda: torch.nn.Softmax(-1)),
        ("Softmax-dim1", lambda: qt.Softmax(1), lambda: torch.nn.Softmax(1)),
    ]


@pytest.mark.parametrize("name,ours,theirs", _pairs(), ids=[p[0] for p in _pairs()])
def test_modules_match_torch(name, ours, theirs):
    a, b = ours(), theirs()
    with torch.no_grad():
        for pa, pb in zip(a.parameters(), b.parameters()):
            v = torch.randn_like(pa) * 0.1 + (1 if pa.dim() == 1 and "weight" in name.lower() else 0)
            pa.copy_(v)
            pb.copy_(v)
    x = (torch.randn(4, 5, 33) * 2).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    ya, yb = a(x), b(x2)
    atol = 1e-5 if "Norm" in name else 1e-6
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=atol)
    dy = torch.randn_like(ya)
    # A loss through a second op, so that the upstream gradient is not all ones.
    (ya * dy).sum().backward()
    (yb * dy).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-4)


def test_functions_match_torch():
    x = torch.randn(3, 7, 40, requires_grad=True)
    up = torch.randn(3, 7, 40, requires_grad=True)
    w = torch.randn(9, 40, requires_grad=True)
    b = torch.randn(9, requires_grad=True)
    cases = [
        ("swiglu", lambda x, up, w, b: qt.swiglu(x, up), lambda x, up, w, b: torch.nn.functional.silu(x) * up),
        ("linear", lambda x, up, w, b: qt.linear(x, w, b), lambda x, up, w, b: torch.nn.functional.linear(x, w, b)),
        ("normalize", lambda x, up, w, b: qt.normalize(x), lambda x, up, w, b: torch.nn.functional.normalize(x, dim=-1)),
    ]
    for name, ours, theirs in cases:
        ins = [t.detach().clone().requires_grad_() for t in (x, up, w, b)]
        ins2 = [t.detach().clone().requires_grad_() for t in (x, up, w, b)]
        ya, yb = ours(*ins), theirs(*ins2)
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5, msg=name)
        dy = torch.randn_like(ya)
        (ya * dy).sum().backward()
        (yb * dy).sum().backward()
        for i, (p, q) in enumerate(zip(ins, ins2)):
            if q.grad is None:
                assert p.grad is None or not p.grad.any(), (name, i)
                continue
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4, msg=f"{name} grad {i}")


GRADCHECK = dict(eps=1e-3, atol=1e-3, rtol=1e-2)


@pytest.mark.parametrize("name", ["rms_norm", "layer_norm", "normalize", "softmax", "gelu", "gelu_tanh",
                                  "silu", "swiglu", "linear"])
def test_gradcheck_float64(name):
    d = torch.float64
    x = torch.randn(3, 6, dtype=d, requires_grad=True)
    w = (1 + 0.1 * torch.randn(6, dtype=d)).requires_grad_()
    b = torch.randn(6, dtype=d, requires_grad=True)
    fns = {
        "rms_norm": (lambda x, w: qt.rms_norm(x, w), (x, w)),
        "layer_norm": (lambda x, w, b: qt.layer_norm(x, w, b), (x, w, b)),
        "normalize": (qt.normalize, (x,)),
        "softmax": (qt.softmax, (x,)),
        "gelu": (qt.gelu, (x,)),
        "gelu_tanh": (lambda x: qt.gelu(x, "tanh"), (x,)),
        "silu": (qt.silu, (x,)),
        "swiglu": (qt.swiglu, (x, torch.randn(3, 6, dtype=d, requires_grad=True))),
        "linear": (qt.linear, (x, torch.randn(4, 6, dtype=d, requires_grad=True),
                               torch.randn(4, dtype=d, requires_grad=True))),
    }
    f, inputs = fns[name]
    y = f(*inputs)
    assert y.dtype == torch.float64
    assert torch.autograd.gradcheck(f, inputs, **GRADCHECK)


def test_gradcheck_catches_a_wrong_backward():
    """The gradcheck tolerances above are tight enough to fail a backward that is off by 5%."""

    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return qt.SiLUFn.apply(x)

        @staticmethod
        def backward(ctx, dy):
            (x,) = ctx.saved_tensors
            return 1.05 * torch.from_numpy(qt._ops.silu_backward(qt._np(x), qt._np(dy))).to(x.dtype)

    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert not torch.autograd.gradcheck(Wrong.apply, (x,), raise_exception=False, **GRADCHECK)


def test_training_step_reduces_loss():
    """A tiny model built from our modules trains: loss.backward() reaches every parameter."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), qt.LayerNorm(32), qt.GELU(), torch.nn.Linear(32, 4),
                              qt.RMSNorm(4))
    x, target = torch.randn(64, 16), torch.randn(64, 4)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = ((net(x) - target) ** 2).mean()
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert all(p.grad is not None for p in net.parameters())
    assert losses[-1] < 0.8 * losses[0]


def test_bad_tensor_input():
    with pytest.raises(TypeError, match="floating-point"):
        qt.silu(torch.arange(4))
    with pytest.raises(ValueError, match="weight"):
        qt.rms_norm(torch.randn(2, 8), torch.ones(7))
