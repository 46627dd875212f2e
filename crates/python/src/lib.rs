//! The Python module `qwen3vl._native`: a thin skin over the engine ([`model`]) and the kernels ([`ops`]).
//! The pure-Python package `qwen3vl` (python/qwen3vl/) wraps it: argument normalisation (PIL images,
//! OpenAI-shaped messages) and the torch autograd modules live there.
//!
//! Kernels for the ops are chosen once (the detected level, or `QWEN3VL_SIMD`) and kept in a process-wide
//! slot that `set_simd` / `set_threads` replace; each op call copies that small value and dispatches once.

use std::sync::RwLock;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use qwen3vl_kernels::isa::{Features, Isa};
use qwen3vl_kernels::Kernels;

mod image;
mod model;
mod ops;

/// The kernels the ops run on (None until first use).
static OPS_KERNELS: RwLock<Option<Kernels>> = RwLock::new(None);

/// The kernels for the ops: the ones set by `set_simd`/`set_threads`, else the detected level.
pub(crate) fn kernels() -> PyResult<Kernels> {
    if let Some(k) = *OPS_KERNELS.read().unwrap_or_else(|e| e.into_inner()) {
        return Ok(k);
    }
    let k = Kernels::detect().map_err(|e| PyRuntimeError::new_err(format!("SIMD level: {e}")))?;
    *OPS_KERNELS.write().unwrap_or_else(|e| e.into_inner()) = Some(k);
    Ok(k)
}

fn set_kernels(k: Kernels) {
    *OPS_KERNELS.write().unwrap_or_else(|e| e.into_inner()) = Some(k);
}

/// What this CPU offers: {"level": the level the ops use, "best": the best level this CPU supports,
/// "available": every usable level, "features": the detected feature names, "threads": the ops' thread count}.
#[pyfunction]
fn cpu(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let k = kernels()?;
    let f = Features::detect();
    let d = PyDict::new(py);
    d.set_item("level", k.isa().to_string())?;
    d.set_item("best", f.best().to_string())?;
    let avail: Vec<String> = f.available().iter().map(|i| i.to_string()).collect();
    d.set_item("available", avail)?;
    d.set_item("features", f.names())?;
    d.set_item("threads", k.threads())?;
    Ok(d)
}

/// Run the ops at SIMD `level` ("scalar", "sse4.1", "avx2", "avx512"); a ValueError naming the levels
/// this CPU supports when it does not support `level`.
#[pyfunction]
fn set_simd(level: &str) -> PyResult<()> {
    let isa = Isa::parse(level).map_err(|e| {
        PyValueError::new_err(format!("{e}; expected one of scalar, sse4.1, avx2, avx512"))
    })?;
    let threads = kernels()?.threads();
    let k = Kernels::new(isa).map_err(|e| PyValueError::new_err(e.to_string()))?;
    set_kernels(k.with_threads(threads));
    Ok(())
}

/// Run the ops on `n` threads (at least 1; the default is one per hardware thread).
#[pyfunction]
fn set_threads(n: usize) -> PyResult<()> {
    if n == 0 {
        return Err(PyValueError::new_err("threads must be at least 1"));
    }
    set_kernels(kernels()?.with_threads(n));
    Ok(())
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cpu, m)?)?;
    m.add_function(wrap_pyfunction!(set_simd, m)?)?;
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    m.add_class::<model::Model>()?;
    m.add_class::<model::TextStream>()?;
    m.add("EngineError", model::engine_error_type(m.py()))?;
    let ops_mod = PyModule::new(m.py(), "ops")?;
    ops::register(&ops_mod)?;
    m.add_submodule(&ops_mod)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
