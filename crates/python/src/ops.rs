//! `qwen3vl.ops`: the vectorized kernels and their backward passes on float32 numpy arrays.
//!
//! Every op takes arrays of any leading shape whose last axis is the row (the normalized / softmaxed axis,
//! or the features of a matmul). Inputs must be float32 (weights of `matmul` may also be bf16 as raw
//! uint16 bits): another dtype is a TypeError, never a silent conversion. C-contiguous inputs are read in
//! place; others are copied to C order first. Outputs are new C-contiguous float32 arrays. The GIL is
//! released while a kernel runs.

use numpy::{
    Element, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use qwen3vl_kernels::matmul::{MatmulGrads, MatmulPath, Weight};
use qwen3vl_kernels::{KernelError, Kernels};

type Arr<'py> = Bound<'py, PyArrayDyn<f32>>;

/// A numpy input: its data in C order (borrowed when already C-contiguous, else copied) and its shape.
struct In<'py, T: Element> {
    arr: PyReadonlyArrayDyn<'py, T>,
    copy: Option<Vec<T>>,
}

impl<T: Element + Copy> In<'_, T> {
    fn data(&self) -> &[T] {
        match &self.copy {
            Some(v) => v,
            // Checked C-contiguous when made.
            None => self.arr.as_slice().unwrap_or(&[]),
        }
    }
    fn shape(&self) -> &[usize] {
        self.arr.shape()
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// `obj` as an array of `T` (`dtype` names T in messages).
fn input<'py, T: Element + Copy>(
    name: &str,
    obj: &Bound<'py, PyAny>,
    dtype: &str,
) -> PyResult<In<'py, T>> {
    let Ok(a) = obj.cast::<PyArrayDyn<T>>() else {
        return Err(match obj.cast::<PyUntypedArray>() {
            Ok(u) => PyTypeError::new_err(format!(
                "{name}: expected a {dtype} array, got dtype {}; convert it with .astype(numpy.{dtype})",
                u.dtype().str().map(|s| s.to_string()).unwrap_or_default()
            )),
            Err(_) => PyTypeError::new_err(format!(
                "{name}: expected a numpy.ndarray of {dtype}, got {}",
                type_name(obj)
            )),
        });
    };
    let arr = a.readonly();
    // `as_slice` also accepts Fortran order: only a C-contiguous array is read in place.
    let copy = if a.is_c_contiguous() && arr.as_slice().is_ok() {
        None
    } else {
        Some(arr.as_array().iter().copied().collect())
    };
    Ok(In { arr, copy })
}

fn f32_in<'py>(name: &str, obj: &Bound<'py, PyAny>) -> PyResult<In<'py, f32>> {
    input(name, obj, "float32")
}

/// Length of the rows (the last axis); a ValueError for a 0-d array.
fn row_len(name: &str, shape: &[usize]) -> PyResult<usize> {
    shape.last().copied().ok_or_else(|| {
        PyValueError::new_err(format!(
            "{name}: expected an array with at least one axis (the last is the row), got a 0-d array"
        ))
    })
}

fn same_shape(name: &str, got: &[usize], want_name: &str, want: &[usize]) -> PyResult<()> {
    if got == want {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!(
            "{name}: shape {got:?} differs from the shape of {want_name} {want:?}"
        )))
    }
}

/// A 1-d parameter of `n` elements (weight or bias of a norm).
fn vector_of(name: &str, shape: &[usize], n: usize) -> PyResult<()> {
    if shape == [n] {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!(
            "{name}: shape {shape:?}, expected ({n},) to match the last axis of x"
        )))
    }
}

fn kerr(e: KernelError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// A new uninitialised float32 array; every element is written by the op before it is returned.
fn new_out<'py>(py: Python<'py>, shape: &[usize]) -> Arr<'py> {
    // Safety: the array is fully written (by the kernel called next) before Python sees it.
    unsafe { PyArrayDyn::<f32>::new(py, shape, false) }
}

fn zeros<'py>(py: Python<'py>, shape: &[usize]) -> Arr<'py> {
    PyArrayDyn::<f32>::zeros(py, shape, false)
}

/// The data of an array made by [`new_out`] / [`zeros`] (C-contiguous, not yet shared with Python).
/// Only for such fresh arrays, once each: nothing else refers to their data until the op returns them.
#[allow(clippy::mut_from_ref)]
fn data_mut<'a>(a: &'a Arr<'_>) -> &'a mut [f32] {
    // Safety: the array was just created here, is contiguous, and no other reference to its data exists.
    unsafe { a.as_slice_mut() }.expect("a new array is contiguous")
}

/// How an op reads its first input ("the rows"): elementwise (any shape, 0-d too), or row-wise over the
/// last axis (the row length is passed to the kernel; a 0-d array is a ValueError).
#[derive(Clone, Copy, PartialEq)]
enum Axis {
    Elementwise,
    Rows,
}

/// A further float32 input of an op, checked against the first one.
#[derive(Clone, Copy)]
enum In2 {
    /// Shaped like the first input (up of swiglu, dy of a backward).
    Like,
    /// A 1-d parameter of the row length (weight or bias of a norm).
    Param,
}

/// An output of an op.
#[derive(Clone, Copy)]
enum Out {
    /// Shaped like the first input, fully written by the kernel.
    Like,
    /// (n,) zeros the kernel accumulates into (the gradient of a norm's parameter).
    Param,
}

/// The float32 slices an op's kernel reads: the first input and the further ones.
type Ins<'a, const I: usize> = (&'a [f32], [&'a [f32]; I]);

/// Runs one float32 op: reads `first` (named `first.0` in messages) and the further inputs `rest` in
/// order (type errors first), checks the row length (Rows) and each further input against `first`, makes
/// `outs`, and runs `f(k, (first, rest), n, outs)` with the GIL released (n: the row length, 0 when
/// elementwise); a kernel error is a ValueError. Returns the outputs.
fn op<'py, const I: usize, const O: usize, F>(
    py: Python<'py>,
    axis: Axis,
    first: (&str, &Bound<'py, PyAny>),
    rest: [(&str, &Bound<'py, PyAny>, In2); I],
    outs: [Out; O],
    f: F,
) -> PyResult<[Arr<'py>; O]>
where
    F: FnOnce(&Kernels, Ins<'_, I>, usize, [&mut [f32]; O]) -> Result<(), KernelError> + Send,
{
    let k = crate::kernels()?;
    let x = f32_in(first.0, first.1)?;
    let more = rest
        .iter()
        .map(|(name, obj, _)| f32_in(name, obj))
        .collect::<PyResult<Vec<_>>>()?;
    let n = match axis {
        Axis::Rows => row_len(first.0, x.shape())?,
        Axis::Elementwise => 0,
    };
    for ((name, _, role), a) in rest.iter().zip(&more) {
        match role {
            In2::Like => same_shape(name, a.shape(), first.0, x.shape())?,
            In2::Param => vector_of(name, a.shape(), n)?,
        }
    }
    let outs = outs.map(|o| match o {
        Out::Like => new_out(py, x.shape()),
        Out::Param => zeros(py, &[n]),
    });
    let ins = (x.data(), std::array::from_fn(|i| more[i].data()));
    let od = outs.each_ref().map(|a| data_mut(a));
    py.detach(|| f(&k, ins, n, od)).map_err(kerr)?;
    Ok(outs)
}

macro_rules! activations {
    ($( $(#[$doc:meta])* $name:ident, $grad:ident ; )*) => {$(
        $(#[$doc])*
        #[pyfunction]
        fn $name<'py>(py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Arr<'py>> {
            let [out] = op(py, Axis::Elementwise, ("x", x), [], [Out::Like], |k, (x, []), _, [o]| {
                k.$name(x, o)
            })?;
            Ok(out)
        }
        /// Backward: dx = dy · f'(x). x, dy: same shape.
        #[pyfunction]
        fn $grad<'py>(
            py: Python<'py>,
            x: &Bound<'py, PyAny>,
            dy: &Bound<'py, PyAny>,
        ) -> PyResult<Arr<'py>> {
            let [dx] = op(
                py,
                Axis::Elementwise,
                ("x", x),
                [("dy", dy, In2::Like)],
                [Out::Like],
                |k, (x, [dy]), _, [dx]| k.$grad(x, dy, dx),
            )?;
            Ok(dx)
        }
    )*};
}

activations! {
    /// gelu with the tanh approximation: 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))).
    gelu_tanh, gelu_tanh_backward;
    /// gelu (exact): x·Φ(x).
    gelu_erf, gelu_erf_backward;
    /// silu: x·σ(x).
    silu, silu_backward;
    /// relu: max(x, 0).
    relu, relu_backward;
}

/// silu(gate)·up. gate, up: same shape.
#[pyfunction]
fn swiglu<'py>(
    py: Python<'py>,
    gate: &Bound<'py, PyAny>,
    up: &Bound<'py, PyAny>,
) -> PyResult<Arr<'py>> {
    let [out] = op(
        py,
        Axis::Elementwise,
        ("gate", gate),
        [("up", up, In2::Like)],
        [Out::Like],
        |k, (g, [u]), _, [o]| k.swiglu(g, u, o),
    )?;
    Ok(out)
}

/// Backward of swiglu: (dgate, dup).
#[pyfunction]
fn swiglu_backward<'py>(
    py: Python<'py>,
    gate: &Bound<'py, PyAny>,
    up: &Bound<'py, PyAny>,
    dy: &Bound<'py, PyAny>,
) -> PyResult<(Arr<'py>, Arr<'py>)> {
    let [dg, du] = op(
        py,
        Axis::Elementwise,
        ("gate", gate),
        [("up", up, In2::Like), ("dy", dy, In2::Like)],
        [Out::Like, Out::Like],
        |k, (g, [u, d]), _, [dg, du]| k.swiglu_backward(g, u, d, dg, du),
    )?;
    Ok((dg, du))
}

/// x / max(‖x‖₂, eps) over the last axis (torch.nn.functional.normalize(x, dim=-1)).
#[pyfunction]
#[pyo3(signature = (x, eps = 1e-12))]
fn normalize<'py>(py: Python<'py>, x: &Bound<'py, PyAny>, eps: f32) -> PyResult<Arr<'py>> {
    let [out] = op(
        py,
        Axis::Rows,
        ("x", x),
        [],
        [Out::Like],
        |k, (x, []), n, [o]| k.normalize_rows(x, n, eps, o),
    )?;
    Ok(out)
}

/// Backward of normalize: dx.
#[pyfunction]
#[pyo3(signature = (x, dy, eps = 1e-12))]
fn normalize_backward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    dy: &Bound<'py, PyAny>,
    eps: f32,
) -> PyResult<Arr<'py>> {
    let [dx] = op(
        py,
        Axis::Rows,
        ("x", x),
        [("dy", dy, In2::Like)],
        [Out::Like],
        |k, (x, [dy]), n, [dx]| k.normalize_rows_backward(x, n, eps, dy, dx),
    )?;
    Ok(dx)
}

/// x / sqrt(mean(x²) + eps) · weight over the last axis.
#[pyfunction]
#[pyo3(signature = (x, weight, eps = 1e-6))]
fn rms_norm<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    eps: f32,
) -> PyResult<Arr<'py>> {
    let [out] = op(
        py,
        Axis::Rows,
        ("x", x),
        [("weight", weight, In2::Param)],
        [Out::Like],
        |k, (x, [w]), _, [o]| k.rms_norm(x, w, eps, o),
    )?;
    Ok(out)
}

/// Backward of rms_norm: (dx, dweight).
#[pyfunction]
#[pyo3(signature = (x, weight, dy, eps = 1e-6))]
fn rms_norm_backward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    dy: &Bound<'py, PyAny>,
    eps: f32,
) -> PyResult<(Arr<'py>, Arr<'py>)> {
    let [dx, dw] = op(
        py,
        Axis::Rows,
        ("x", x),
        [("weight", weight, In2::Param), ("dy", dy, In2::Like)],
        [Out::Like, Out::Param],
        |k, (x, [w, dy]), _, [dx, dw]| k.rms_norm_backward(x, w, eps, dy, dx, dw),
    )?;
    Ok((dx, dw))
}

/// (x - mean) / sqrt(var + eps) · weight + bias over the last axis (biased variance, as torch).
#[pyfunction]
#[pyo3(signature = (x, weight, bias, eps = 1e-5))]
fn layer_norm<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    bias: &Bound<'py, PyAny>,
    eps: f32,
) -> PyResult<Arr<'py>> {
    let [out] = op(
        py,
        Axis::Rows,
        ("x", x),
        [("weight", weight, In2::Param), ("bias", bias, In2::Param)],
        [Out::Like],
        |k, (x, [w, b]), _, [o]| k.layer_norm(x, w, b, eps, o),
    )?;
    Ok(out)
}

/// Backward of layer_norm: (dx, dweight, dbias).
#[pyfunction]
#[pyo3(signature = (x, weight, dy, eps = 1e-5))]
fn layer_norm_backward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    dy: &Bound<'py, PyAny>,
    eps: f32,
) -> PyResult<(Arr<'py>, Arr<'py>, Arr<'py>)> {
    let [dx, dw, db] = op(
        py,
        Axis::Rows,
        ("x", x),
        [("weight", weight, In2::Param), ("dy", dy, In2::Like)],
        [Out::Like, Out::Param, Out::Param],
        |k, (x, [w, dy]), _, [dx, dw, db]| k.layer_norm_backward(x, w, eps, dy, dx, dw, db),
    )?;
    Ok((dx, dw, db))
}

/// softmax over the last axis.
#[pyfunction]
fn softmax<'py>(py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Arr<'py>> {
    let [out] = op(
        py,
        Axis::Rows,
        ("x", x),
        [],
        [Out::Like],
        |k, (x, []), n, [o]| k.softmax(x, n, 1.0, None, o),
    )?;
    Ok(out)
}

/// Backward of softmax given its output y: dx = y·(dy - Σ y·dy).
#[pyfunction]
fn softmax_backward<'py>(
    py: Python<'py>,
    y: &Bound<'py, PyAny>,
    dy: &Bound<'py, PyAny>,
) -> PyResult<Arr<'py>> {
    let [dx] = op(
        py,
        Axis::Rows,
        ("y", y),
        [("dy", dy, In2::Like)],
        [Out::Like],
        |k, (y, [dy]), n, [dx]| k.softmax_backward(y, n, dy, dx),
    )?;
    Ok(dx)
}

/// A matmul weight: float32, or bf16 as raw uint16 bits; (n, k).
enum W<'py> {
    F32(In<'py, f32>),
    Bf16(In<'py, u16>),
}

impl W<'_> {
    fn shape(&self) -> &[usize] {
        match self {
            W::F32(a) => a.shape(),
            W::Bf16(a) => a.shape(),
        }
    }
    fn weight(&self) -> Weight<'_> {
        match self {
            W::F32(a) => Weight::F32(a.data()),
            W::Bf16(a) => Weight::Bf16(a.data()),
        }
    }
}

fn weight_in<'py>(obj: &Bound<'py, PyAny>) -> PyResult<W<'py>> {
    if obj.cast::<PyArrayDyn<u16>>().is_ok() {
        return Ok(W::Bf16(input("weight", obj, "uint16")?));
    }
    let w = input("weight", obj, "float32").map_err(|_| {
        PyTypeError::new_err(format!(
            "weight: expected a float32 array or bf16 bits as a uint16 array (see qwen3vl.ops.to_bf16), got {}",
            match obj.cast::<PyUntypedArray>() {
                Ok(u) => format!(
                    "dtype {}",
                    u.dtype().str().map(|s| s.to_string()).unwrap_or_default()
                ),
                Err(_) => type_name(obj),
            }
        ))
    })?;
    Ok(W::F32(w))
}

/// (n, k) of a weight matching x's last axis k.
fn weight_dims(w: &W, k: usize) -> PyResult<usize> {
    match *w.shape() {
        [n, wk] if wk == k => Ok(n),
        ref s => Err(PyValueError::new_err(format!(
            "weight: shape {s:?}, expected (n, {k}) (nn.Linear layout: out_features, in_features = x's last axis)"
        ))),
    }
}

/// y = x · weightᵀ (+ bias): x (..., k), weight (n, k) float32 or bf16 bits (uint16), bias (n,) -> (..., n).
#[pyfunction]
#[pyo3(signature = (x, weight, bias = None))]
fn matmul<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    bias: Option<&Bound<'py, PyAny>>,
) -> PyResult<Arr<'py>> {
    let kern = crate::kernels()?;
    let x = f32_in("x", x)?;
    let k = row_len("x", x.shape())?;
    let w = weight_in(weight)?;
    let n = weight_dims(&w, k)?;
    let b = bias.map(|b| f32_in("bias", b)).transpose()?;
    if let Some(b) = &b {
        vector_of("bias", b.shape(), n)?;
    }
    let m = x.data().len().checked_div(k).unwrap_or(0);
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("checked above") = n;
    let y = new_out(py, &shape);
    let (xd, wv, bd, yd) = (
        x.data(),
        w.weight(),
        b.as_ref().map(|b| b.data()),
        data_mut(&y),
    );
    if k == 0 {
        // An empty sum: y = bias (or 0).
        for row in yd.chunks_exact_mut(n.max(1)) {
            match bd {
                Some(b) => row.copy_from_slice(b),
                None => row.fill(0.0),
            }
        }
        return Ok(y);
    }
    py.detach(|| kern.matmul_unpacked(xd, m, wv, n, k, bd, yd, MatmulPath::Exact))
        .map_err(kerr)?;
    Ok(y)
}

/// Backward of matmul: (dx, dweight (float32), dbias or None when `bias` is False).
#[pyfunction]
#[pyo3(signature = (x, weight, dy, bias = false))]
fn matmul_backward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    dy: &Bound<'py, PyAny>,
    bias: bool,
) -> PyResult<(Arr<'py>, Arr<'py>, Option<Arr<'py>>)> {
    let kern = crate::kernels()?;
    let (x, dy) = (f32_in("x", x)?, f32_in("dy", dy)?);
    let k = row_len("x", x.shape())?;
    let w = weight_in(weight)?;
    let n = weight_dims(&w, k)?;
    let mut yshape = x.shape().to_vec();
    *yshape.last_mut().expect("checked above") = n;
    same_shape("dy", dy.shape(), "x · weightᵀ", &yshape)?;
    let m = x.data().len().checked_div(k).unwrap_or(0);
    let m = if k == 0 {
        dy.data().len().checked_div(n).unwrap_or(0)
    } else {
        m
    };
    let (dx, dw) = (new_out(py, x.shape()), zeros(py, &[n, k]));
    let db = bias.then(|| zeros(py, &[n]));
    let (xd, wv, dyd) = (x.data(), w.weight(), dy.data());
    let grads = MatmulGrads {
        dy: dyd,
        dx: Some(data_mut(&dx)),
        dw_accum: Some(data_mut(&dw)),
        db_accum: db.as_ref().map(|d| data_mut(d)),
    };
    py.detach(|| kern.matmul_backward(xd, m, wv, n, k, grads))
        .map_err(kerr)?;
    Ok((dx, dw, db))
}

/// float32 -> bf16 bits (uint16), rounded to nearest even (the weight format `matmul` takes).
#[pyfunction]
fn to_bf16<'py>(py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArrayDyn<u16>>> {
    let k = crate::kernels()?;
    let x = f32_in("x", x)?;
    // Safety: fully written by f32_to_bf16 below.
    let out = unsafe { PyArrayDyn::<u16>::new(py, x.shape(), false) };
    let od = unsafe { out.as_slice_mut() }.expect("a new array is contiguous");
    let xd = x.data();
    py.detach(|| k.f32_to_bf16(xd, od)).map_err(kerr)?;
    Ok(out)
}

/// bf16 bits (uint16) -> float32 (exact).
#[pyfunction]
fn from_bf16<'py>(py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Arr<'py>> {
    let k = crate::kernels()?;
    let x: In<u16> = input("x", x, "uint16")?;
    let out = new_out(py, x.shape());
    let (xd, od) = (x.data(), data_mut(&out));
    py.detach(|| k.bf16_to_f32(xd, od)).map_err(kerr)?;
    Ok(out)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    macro_rules! add {
        ($($f:ident),* $(,)?) => {$( m.add_function(wrap_pyfunction!($f, m)?)?; )*};
    }
    add!(
        gelu_tanh,
        gelu_tanh_backward,
        gelu_erf,
        gelu_erf_backward,
        silu,
        silu_backward,
        relu,
        relu_backward,
        swiglu,
        swiglu_backward,
        normalize,
        normalize_backward,
        rms_norm,
        rms_norm_backward,
        layer_norm,
        layer_norm_backward,
        softmax,
        softmax_backward,
        matmul,
        matmul_backward,
        to_bf16,
        from_bf16,
    );
    Ok(())
}
