//! nn.Linear on packed weights, and the loader that walks the checkpoint's module paths.

use std::cell::Cell;
use std::fmt::Display;

use qwen3vl_kernels::Kernels;

use crate::norm::{LayerNorm, RmsNorm};
use crate::weights::{Dtype, TensorRef, Weights};
use crate::{KernelCtx, ModelError};
use qwen3vl_kernels::matmul::{MatmulPath, PackedWeight, Weight, WeightPacker};
use qwen3vl_kernels::KernelError;

/// The kernels and the matmul path every module of one model uses.
#[derive(Clone, Copy)]
pub(crate) struct Ctx {
    pub k: Kernels,
    pub path: MatmulPath,
}

/// y = x·Wᵀ + b with W (out_features, in_features) packed once at load.
pub struct Linear {
    pub weight: PackedWeight,
    pub bias: Option<Vec<f32>>,
    pub out_features: usize,
    pub in_features: usize,
}

impl Linear {
    /// x: (m, in_features) -> y: (m, out_features)
    pub(crate) fn forward(
        &self,
        c: &Ctx,
        x: &[f32],
        m: usize,
        y: &mut [f32],
    ) -> Result<(), ModelError> {
        c.k.matmul(x, m, &self.weight, self.bias.as_deref(), y, c.path)
            .ctx("matmul")
    }
}

/// Packs tensors stacked along the output dimension: `ts[i]` is (n_i, kk) (trailing dims flattened into kk),
/// n = Σ n_i. Each source is packed straight into the packed storage (bf16 from its mapping; other dtypes
/// widened to f32 one tensor at a time), then its mapped pages are released: no concatenated or widened
/// copy of the whole weight is ever held.
pub(crate) fn pack(
    k: &Kernels,
    ts: &[&TensorRef],
    n: usize,
    kk: usize,
) -> Result<PackedWeight, ModelError> {
    let bf16 = ts.iter().all(|t| t.dtype == Dtype::BF16);
    pack_into(k.weight_packer(n, kk, bf16), ts)
}

/// Pushes the rows of `ts` (each (n_i, kk)) into `packer`, one tensor at a time, releasing each source.
fn pack_into(
    packer: Result<WeightPacker, KernelError>,
    ts: &[&TensorRef],
) -> Result<PackedWeight, ModelError> {
    let err = |source| ModelError::Kernel {
        context: format!(
            "packing {}",
            ts.iter()
                .map(|t| t.key.as_str())
                .collect::<Vec<_>>()
                .join(" + ")
        ),
        source,
    };
    let mut packer = packer.map_err(err)?;
    for t in ts {
        // (n_i, trailing dims...): n_i rows of kk
        let rows = t.shape.first().copied().unwrap_or(1);
        let pushed = match t.bf16_bits() {
            Some(bits) => packer.push(Weight::Bf16(&bits), rows),
            None => packer.push(Weight::F32(&t.to_f32()?), rows),
        };
        t.release();
        pushed.map_err(err)?;
    }
    packer.finish().map_err(err)
}

/// A position in the checkpoint's module tree (`model.visual.blocks.3`), like candle's VarBuilder.
pub(crate) struct Vb<'a> {
    pub w: &'a Weights,
    pub k: Kernels,
    prefix: String,
    progress: Option<&'a dyn Fn(u64, u64)>,
    done: &'a Cell<u64>,
    total: u64,
}

impl<'a> Vb<'a> {
    pub fn root(
        w: &'a Weights,
        k: Kernels,
        progress: Option<&'a dyn Fn(u64, u64)>,
        done: &'a Cell<u64>,
    ) -> Vb<'a> {
        Vb {
            w,
            k,
            prefix: String::new(),
            progress,
            done,
            total: w.total_bytes(),
        }
    }

    /// The child module `name`.
    pub fn pp(&self, name: impl Display) -> Vb<'a> {
        Vb {
            w: self.w,
            k: self.k,
            prefix: self.key(name),
            progress: self.progress,
            done: self.done,
            total: self.total,
        }
    }

    /// The full tensor key of `name` under this module.
    pub fn key(&self, name: impl Display) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    fn tick(&self, t: &TensorRef) {
        self.done.set(self.done.get() + t.bytes().len() as u64);
        if let Some(p) = self.progress {
            p(self.done.get(), self.total);
        }
    }

    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<TensorRef, ModelError> {
        let t = self.w.float(&self.key(name), shape)?;
        self.tick(&t);
        Ok(t)
    }

    pub fn vec(&self, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
        let t = self.tensor(name, &[n])?;
        let v = t.to_f32()?;
        t.release();
        Ok(v)
    }

    /// `{name}.weight` (out, in) and, if `bias`, `{name}.bias` (out).
    pub fn linear(
        &self,
        name: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Linear, ModelError> {
        let m = self.pp(name);
        let t = m.tensor("weight", &[out, inp])?;
        let weight = pack(&self.k, &[&t], out, inp)?;
        let bias = if bias {
            Some(m.vec("bias", out)?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            out_features: out,
            in_features: inp,
        })
    }

    /// Several `{name}.weight` (out_i, in) without bias stacked along the output rows into one packed
    /// weight (Σ out_i, in): one matmul instead of several (fewer fork/joins, longer row streams in decode).
    pub fn linear_cat(&self, parts: &[(&str, usize)], inp: usize) -> Result<Linear, ModelError> {
        let ts = parts
            .iter()
            .map(|&(name, out)| self.pp(name).tensor("weight", &[out, inp]))
            .collect::<Result<Vec<_>, _>>()?;
        let out: usize = parts.iter().map(|p| p.1).sum();
        let weight = pack(&self.k, &ts.iter().collect::<Vec<_>>(), out, inp)?;
        Ok(Linear {
            weight,
            bias: None,
            out_features: out,
            in_features: inp,
        })
    }

    /// `{gate}.weight` and `{up}.weight`, each (i, inp), packed as one SwiGLU pair: its matmul writes
    /// silu(x·gateᵀ)·(x·upᵀ) (m, i) from the microkernel (see `Kernels::swiglu_packer`).
    pub fn linear_swiglu(
        &self,
        gate: &str,
        up: &str,
        i: usize,
        inp: usize,
    ) -> Result<Linear, ModelError> {
        let ts = [gate, up]
            .iter()
            .map(|name| self.pp(name).tensor("weight", &[i, inp]))
            .collect::<Result<Vec<_>, _>>()?;
        let bf16 = ts.iter().all(|t| t.dtype == Dtype::BF16);
        let weight = pack_into(
            self.k.swiglu_packer(i, inp, bf16),
            &ts.iter().collect::<Vec<_>>(),
        )?;
        Ok(Linear {
            weight,
            bias: None,
            out_features: i,
            in_features: inp,
        })
    }

    pub fn layer_norm(&self, name: &str, n: usize, eps: f32) -> Result<LayerNorm, ModelError> {
        let m = self.pp(name);
        Ok(LayerNorm {
            weight: m.vec("weight", n)?,
            bias: m.vec("bias", n)?,
            eps,
        })
    }

    pub fn rms_norm(&self, name: &str, n: usize, eps: f32) -> Result<RmsNorm, ModelError> {
        Ok(RmsNorm {
            weight: self.pp(name).vec("weight", n)?,
            eps,
        })
    }
}
