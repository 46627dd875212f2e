//! nn.Linear on packed weights, and the loader that walks the checkpoint's module paths.

use std::cell::Cell;
use std::fmt::Display;

use qwen3vl_kernels::Kernels;

use crate::norm::{LayerNorm, RmsNorm};
use crate::weight_cache::Session;
use crate::weights::{Dtype, StoredQuant, TensorRef, Weights};
use crate::{KernelCtx, ModelError};
use qwen3vl_kernels::matmul::{MatmulPath, PackedLayout, PackedWeight, Weight, WeightPacker};
use qwen3vl_kernels::quant::{QuantFormat, QuantPacker, QuantWeight};
use qwen3vl_kernels::KernelError;

/// The kernels and the matmul path every module of one model uses.
#[derive(Clone, Copy)]
pub(crate) struct Ctx {
    pub k: Kernels,
    pub path: MatmulPath,
}

/// y = x·Wᵀ + b with W (out_features, in_features) packed or quantized once at load.
pub struct Linear {
    pub weight: LinearWeight,
    pub bias: Option<Vec<f32>>,
    pub out_features: usize,
    pub in_features: usize,
}

/// How a Linear's weight is held.
pub enum LinearWeight {
    /// bf16 or f32 panels of the level's microkernel (a SwiGLU pair when `is_swiglu`).
    Packed(PackedWeight),
    /// Quantized (out, in) rows, run on the int8 kernels (`--quant`).
    Quant(QuantWeight),
    /// A quantized SwiGLU pair: gate (I, in) rows then up (I, in) rows; y = silu(x·gateᵀ)·(x·upᵀ).
    QuantSwiGlu(QuantWeight),
}

impl LinearWeight {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            LinearWeight::Packed(w) => w.bytes(),
            LinearWeight::Quant(w) | LinearWeight::QuantSwiGlu(w) => w.bytes(),
        }
    }

    /// The bytes of the weight's values (packed panels, or quantized values without their scales): what
    /// a matmul streams (the bench probes read bandwidth over it).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            LinearWeight::Packed(w) => w.as_bytes(),
            LinearWeight::Quant(w) | LinearWeight::QuantSwiGlu(w) => w.qs_bytes(),
        }
    }

    /// Row `r` of W (in values) as f32: the values the matmul uses (bf16 widened, or dequantized).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) -> Result<(), KernelError> {
        match self {
            LinearWeight::Packed(w) => w.row_f32(r, out),
            LinearWeight::Quant(w) | LinearWeight::QuantSwiGlu(w) => w.row_f32(r, out),
        }
    }

    /// The quantization format, if quantized.
    pub fn quant_format(&self) -> Option<QuantFormat> {
        match self {
            LinearWeight::Packed(_) => None,
            LinearWeight::Quant(w) | LinearWeight::QuantSwiGlu(w) => Some(w.format()),
        }
    }
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
        match &self.weight {
            LinearWeight::Packed(w) => {
                c.k.matmul(x, m, w, self.bias.as_deref(), y, c.path)
                    .ctx("matmul")
            }
            LinearWeight::Quant(w) => {
                c.k.matmul_quant_path(x, m, w, self.bias.as_deref(), y, c.path)
                    .ctx("quantized matmul")
            }
            LinearWeight::QuantSwiGlu(w) => {
                // gate|up (m, 2I) in one matmul, then y = silu(gate)·up row by row       (m, I)
                let i = self.out_features;
                let mut gu = vec![0f32; m * 2 * i];
                c.k.matmul_quant_path(x, m, w, None, &mut gu, c.path)
                    .ctx("quantized matmul (gate|up)")?;
                for (r, yr) in y[..m * i].chunks_exact_mut(i).enumerate() {
                    let (g, u) = gu[r * 2 * i..(r + 1) * 2 * i].split_at(i);
                    c.k.swiglu(g, u, yr).ctx("swiglu")?;
                }
                Ok(())
            }
        }
    }
}

/// Quantizes tensors stacked along the output dimension (as [`pack`]) into `format`, one source at a time.
pub(crate) fn quantize(
    k: &Kernels,
    format: QuantFormat,
    ts: &[&TensorRef],
    n: usize,
    kk: usize,
) -> Result<QuantWeight, ModelError> {
    pack_into(k.quant_packer(format, n, kk), ts)
}

/// A packer of either kind: rows pushed part by part, then finished.
trait RowSink: Sized {
    type Out;
    fn push(&mut self, part: Weight, rows: usize) -> Result<(), KernelError>;
    fn finish(self) -> Result<Self::Out, KernelError>;
}

impl RowSink for WeightPacker {
    type Out = PackedWeight;
    fn push(&mut self, part: Weight, rows: usize) -> Result<(), KernelError> {
        WeightPacker::push(self, part, rows)
    }
    fn finish(self) -> Result<PackedWeight, KernelError> {
        WeightPacker::finish(self)
    }
}

impl RowSink for QuantPacker {
    type Out = QuantWeight;
    fn push(&mut self, part: Weight, rows: usize) -> Result<(), KernelError> {
        QuantPacker::push(self, part, rows)
    }
    fn finish(self) -> Result<QuantWeight, KernelError> {
        QuantPacker::finish(self)
    }
}

/// Pushes the rows of `ts` (each (n_i, kk)) into `packer`, one tensor at a time, releasing each source.
fn pack_into<P: RowSink>(
    packer: Result<P, KernelError>,
    ts: &[&TensorRef],
) -> Result<P::Out, ModelError> {
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

/// The weights `keys[i]` ((rows_i, inp) each) of checkpoint `w` if it stores them quantized, stacked along
/// the output dimension into one weight; None if it stores them as floats. A mix is an error naming the
/// first float part, and so are parts of different formats. The parts are used in place when they follow
/// one another in one file, values and scales each (the order `qwen3vl quantize` writes them in), at
/// 64-byte-aligned addresses; else they are copied. `loaded` sees each part's values once they are taken
/// (load progress). The one loader of stored quantized linear weights (the model's, and the fuzz target's).
pub fn load_stored_quant(
    w: &Weights,
    k: &Kernels,
    keys: &[(String, usize)],
    inp: usize,
    loaded: &dyn Fn(&TensorRef),
) -> Result<Option<QuantWeight>, ModelError> {
    let quantized: Vec<bool> = keys.iter().map(|(key, _)| w.is_quantized(key)).collect();
    if !quantized.iter().any(|&q| q) {
        return Ok(None);
    }
    if let Some(i) = quantized.iter().position(|&q| !q) {
        return Err(ModelError::Dtype {
            key: keys[i].0.clone(),
            msg: format!(
                "stored as floats while {} is quantized (parts of one fused weight must match)",
                keys[quantized.iter().position(|&q| q).unwrap_or(0)].0
            ),
        });
    }
    let n: usize = keys.iter().map(|k| k.1).sum();
    let mut stored = Vec::with_capacity(keys.len());
    for (key, rows) in keys {
        let s: StoredQuant = w.quantized(key, *rows, inp)?;
        match stored.first().map(|f: &StoredQuant| f.format) {
            Some(first) if first != s.format => {
                return Err(ModelError::Dtype {
                    key: key.clone(),
                    msg: format!(
                        "stored in format {} while {} is {first} (parts of one fused weight must match)",
                        s.format, keys[0].0
                    ),
                });
            }
            _ => stored.push(s),
        }
    }
    let format = stored[0].format;
    // In place when the parts follow one another in one file, values and scales each (the order
    // `qwen3vl quantize` writes them in) at 64-byte-aligned addresses; else copied.
    let contiguous = stored
        .windows(2)
        .all(|p| p[1].values.follows(&p[0].values) && p[1].scales.follows(&p[0].scales));
    if contiguous {
        let (v, s) = (&stored[0].values, &stored[0].scales);
        if let Ok(q) = QuantWeight::from_shared(format, n, inp, v.in_place(), s.in_place()) {
            for s in &stored {
                loaded(&s.values);
            }
            return Ok(Some(q));
        }
    }
    let mut p = k.quant_packer(format, n, inp).ctx(&keys[0].0)?;
    for ((key, rows), s) in keys.iter().zip(&stored) {
        p.push_quantized(s.values.bytes(), &s.d, *rows).ctx(key)?;
        loaded(&s.values);
        s.values.release();
    }
    Ok(Some(p.finish().ctx("quantized weight")?))
}

/// A position in the checkpoint's module tree (`model.visual.blocks.3`), like candle's VarBuilder.
pub(crate) struct Vb<'a> {
    pub w: &'a Weights,
    pub k: Kernels,
    /// Linear weights under this module are quantized to this format at load (None: packed bf16/f32).
    pub quant: Option<QuantFormat>,
    prefix: String,
    progress: Option<&'a dyn Fn(u64, u64)>,
    done: &'a Cell<u64>,
    total: u64,
    /// the packed-weight cache of this load
    cache: &'a Session,
}

impl<'a> Vb<'a> {
    pub fn root(
        w: &'a Weights,
        k: Kernels,
        progress: Option<&'a dyn Fn(u64, u64)>,
        done: &'a Cell<u64>,
        cache: &'a Session,
    ) -> Vb<'a> {
        Vb {
            w,
            k,
            quant: None,
            prefix: String::new(),
            progress,
            done,
            total: w.total_bytes(),
            cache,
        }
    }

    /// The child module `name`.
    pub fn pp(&self, name: impl Display) -> Vb<'a> {
        Vb {
            w: self.w,
            k: self.k,
            quant: self.quant,
            prefix: self.key(name),
            progress: self.progress,
            done: self.done,
            total: self.total,
            cache: self.cache,
        }
    }

    /// This module with its linear weights quantized to `quant` (None: packed).
    pub fn with_quant(&self, quant: Option<QuantFormat>) -> Vb<'a> {
        Vb {
            w: self.w,
            k: self.k,
            quant,
            prefix: self.prefix.clone(),
            progress: self.progress,
            done: self.done,
            total: self.total,
            cache: self.cache,
        }
    }

    /// The weight (n, kk) stacked from `ts`: quantized if this module asks for it, else packed.
    fn weight(&self, ts: &[&TensorRef], n: usize, kk: usize) -> Result<LinearWeight, ModelError> {
        match self.quant {
            Some(f) => quantize(&self.k, f, ts, n, kk).map(LinearWeight::Quant),
            None => self.pack(ts, n, kk),
        }
    }

    /// Packs tensors stacked along the output dimension: `ts[i]` is (n_i, kk) (trailing dims flattened
    /// into kk), n = Σ n_i; or takes them from the packed-weight cache, reading none of the sources. Each
    /// source is packed straight into the packed storage (bf16 from its mapping; other dtypes widened to
    /// f32 one tensor at a time), then its mapped pages are released: no concatenated or widened copy of
    /// the whole weight is ever held.
    pub fn pack(&self, ts: &[&TensorRef], n: usize, kk: usize) -> Result<LinearWeight, ModelError> {
        self.pack_as(ts, n, kk, false).map(LinearWeight::Packed)
    }

    /// [`Vb::pack`], or for `swiglu` the gate (n, kk) and up (n, kk) tensors as one SwiGLU pair.
    fn pack_as(
        &self,
        ts: &[&TensorRef],
        n: usize,
        kk: usize,
        swiglu: bool,
    ) -> Result<PackedWeight, ModelError> {
        let bf16 = ts.iter().all(|t| t.dtype == Dtype::BF16);
        let name = ts
            .iter()
            .map(|t| t.key.as_str())
            .collect::<Vec<_>>()
            .join("+");
        let l = PackedLayout {
            n,
            k: kk,
            bf16,
            swiglu,
        };
        self.cache.packed(&self.k, &name, l, || {
            let packer = match swiglu {
                false => self.k.weight_packer(n, kk, bf16),
                true => self.k.swiglu_packer(n, kk, bf16),
            };
            pack_into(packer, ts)
        })
    }

    /// The full tensor key of `name` under this module.
    pub fn key(&self, name: impl Display) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// A weight (n, kk) from rows already in memory (`parts[i]` of `rows[i]` rows each, e.g. one expert's
    /// slice of a fused 3-D tensor), packed or quantized as this module asks, like [`Vb::linear`] and
    /// [`Vb::linear_swiglu`] (`swiglu`: the parts are gate rows then up rows, n/2 of each). `what` names
    /// the weight in errors.
    pub fn weight_from_rows(
        &self,
        parts: &[(Weight, usize)],
        n: usize,
        kk: usize,
        swiglu: bool,
        what: &str,
    ) -> Result<LinearWeight, ModelError> {
        let err = |source| ModelError::Kernel {
            context: format!("packing {what}"),
            source,
        };
        fn push_all<P: RowSink>(
            mut p: P,
            parts: &[(Weight, usize)],
        ) -> Result<P::Out, KernelError> {
            for &(part, rows) in parts {
                p.push(part, rows)?;
            }
            p.finish()
        }
        let bf16 = parts.iter().all(|p| matches!(p.0, Weight::Bf16(_)));
        Ok(match (self.quant, swiglu) {
            (Some(f), false) => LinearWeight::Quant(
                push_all(self.k.quant_packer(f, n, kk).map_err(err)?, parts).map_err(err)?,
            ),
            (Some(f), true) => LinearWeight::QuantSwiGlu(
                push_all(self.k.quant_packer(f, n, kk).map_err(err)?, parts).map_err(err)?,
            ),
            (None, false) => {
                let l = PackedLayout {
                    n,
                    k: kk,
                    bf16,
                    swiglu,
                };
                LinearWeight::Packed(self.cache.packed(&self.k, what, l, || {
                    push_all(self.k.weight_packer(n, kk, bf16).map_err(err)?, parts).map_err(err)
                })?)
            }
            (None, true) => {
                let l = PackedLayout {
                    n: n / 2,
                    k: kk,
                    bf16,
                    swiglu,
                };
                LinearWeight::Packed(self.cache.packed(&self.k, what, l, || {
                    push_all(self.k.swiglu_packer(n / 2, kk, bf16).map_err(err)?, parts)
                        .map_err(err)
                })?)
            }
        })
    }

    pub(crate) fn tick(&self, t: &TensorRef) {
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

    /// The weights `keys[i]` ((rows_i, inp) each) if the checkpoint stores them quantized, stacked into one;
    /// None if it stores them as floats (see [`load_stored_quant`]).
    pub fn stored_quant(
        &self,
        keys: &[(String, usize)],
        inp: usize,
    ) -> Result<Option<QuantWeight>, ModelError> {
        load_stored_quant(self.w, &self.k, keys, inp, &|t| self.tick(t))
    }

    /// An embedding table: the float tensor, or (a quantized checkpoint) the raw quantized one, whose rows
    /// are then read from the tied lm head (the model checks that they are tied).
    pub fn embedding(&self, name: &str, shape: &[usize]) -> Result<TensorRef, ModelError> {
        let key = self.key(name);
        if self.w.is_quantized(&key) {
            return self.w.raw(&key);
        }
        self.tensor(name, shape)
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
        let weight = match self.stored_quant(&[(m.key("weight"), out)], inp)? {
            Some(q) => LinearWeight::Quant(q),
            None => self.weight(&[&m.tensor("weight", &[out, inp])?], out, inp)?,
        };
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
        let out: usize = parts.iter().map(|p| p.1).sum();
        let keys: Vec<(String, usize)> = parts
            .iter()
            .map(|&(name, rows)| (self.pp(name).key("weight"), rows))
            .collect();
        if let Some(q) = self.stored_quant(&keys, inp)? {
            return Ok(Linear {
                weight: LinearWeight::Quant(q),
                bias: None,
                out_features: out,
                in_features: inp,
            });
        }
        let ts = parts
            .iter()
            .map(|&(name, out)| self.pp(name).tensor("weight", &[out, inp]))
            .collect::<Result<Vec<_>, _>>()?;
        let weight = self.weight(&ts.iter().collect::<Vec<_>>(), out, inp)?;
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
        let keys: Vec<(String, usize)> = [gate, up]
            .iter()
            .map(|name| (self.pp(name).key("weight"), i))
            .collect();
        if let Some(q) = self.stored_quant(&keys, inp)? {
            return Ok(Linear {
                weight: LinearWeight::QuantSwiGlu(q),
                bias: None,
                out_features: i,
                in_features: inp,
            });
        }
        let ts = [gate, up]
            .iter()
            .map(|name| self.pp(name).tensor("weight", &[i, inp]))
            .collect::<Result<Vec<_>, _>>()?;
        let ts = ts.iter().collect::<Vec<_>>();
        let weight = match self.quant {
            Some(f) => LinearWeight::QuantSwiGlu(quantize(&self.k, f, &ts, 2 * i, inp)?),
            None => LinearWeight::Packed(self.pack_as(&ts, i, inp, true)?),
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::{write_safetensors_with_metadata, OutTensor};
    use qwen3vl_kernels::matmul::Weight;

    /// Parts of a fused weight stored quantized (q, k, v of 64, 32, 32 rows of k = 256), written in
    /// `order`, each values tensor then (after all of them) each scales tensor as `qwen3vl quantize` lays
    /// them out, or interleaved; returns the loaded weight and the one quantized from the same floats.
    fn load_parts(
        format: QuantFormat,
        interleaved: bool,
        name: &str,
    ) -> (QuantWeight, QuantWeight) {
        let k = Kernels::detect().unwrap();
        let (inp, parts) = (256usize, [("q", 64usize), ("k", 32), ("v", 32)]);
        let n: usize = parts.iter().map(|p| p.1).sum();
        let w: Vec<f32> = (0..n * inp)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 700.0)
            .collect();
        let whole = k.quantize_weight(format, Weight::F32(&w), n, inp).unwrap();
        let (rb, ns) = (format.row_bytes(inp), format.row_scales(inp));
        let (mut values, mut scales, mut meta) = (Vec::new(), Vec::new(), Vec::new());
        let mut r0 = 0;
        for (p, rows) in parts {
            let key = format!("l.{p}_proj.weight");
            let q = k
                .quantize_weight(
                    format,
                    Weight::F32(&w[r0 * inp..(r0 + rows) * inp]),
                    rows,
                    inp,
                )
                .unwrap();
            values.push((key.clone(), q.qs_bytes().to_vec(), vec![rows, rb]));
            let d: Vec<u8> = q.scales().iter().flat_map(|v| v.to_le_bytes()).collect();
            scales.push((format!("{key}_scale"), d, vec![rows, ns]));
            meta.push((format!("quant:{key}"), format.name().to_string()));
            r0 += rows;
        }
        let mut order = Vec::new();
        if interleaved {
            for (v, s) in values.into_iter().zip(scales) {
                order.push((v, Dtype::U8));
                order.push((s, Dtype::F32));
            }
        } else {
            order.extend(values.into_iter().map(|v| (v, Dtype::U8)));
            order.extend(scales.into_iter().map(|s| (s, Dtype::F32)));
        }
        let out: Vec<OutTensor> = order
            .iter()
            .map(|((name, data, shape), dtype)| OutTensor::borrowed(name, *dtype, shape, data))
            .collect();
        let dir =
            std::env::temp_dir().join(format!("qwen3vl-inplace-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_safetensors_with_metadata(&dir.join("model.safetensors"), &out, &meta).unwrap();
        let weights = Weights::open_dir(&dir).unwrap();
        let (done, cache) = (Cell::new(0), Session::off());
        let vb = Vb::root(&weights, k, None, &done, &cache);
        let keys: Vec<(String, usize)> = parts
            .iter()
            .map(|&(p, rows)| (format!("l.{p}_proj.weight"), rows))
            .collect();
        let loaded = vb.stored_quant(&keys, inp).unwrap().unwrap();
        drop(weights);
        let _ = std::fs::remove_dir_all(&dir);
        (loaded, whole)
    }

    /// Parts written contiguously (values, then scales) are used in place, and hold the bytes of the
    /// weight quantized whole; interleaved ones are copied into the same bytes. The mapping outlives the
    /// `Weights` it came from.
    #[test]
    fn contiguous_quantized_parts_load_in_place() {
        for format in QuantFormat::ALL {
            for interleaved in [false, true] {
                let (w, whole) =
                    load_parts(format, interleaved, &format!("{format}-{interleaved}"));
                assert_eq!(
                    w.is_shared(),
                    !interleaved,
                    "{format} interleaved {interleaved}"
                );
                assert_eq!(w.qs_bytes(), whole.qs_bytes(), "{format}");
                assert_eq!(w.scales(), whole.scales(), "{format}");
                let (mut a, mut b) = (vec![0f32; 256], vec![0f32; 256]);
                for r in [0, 63, 64, 127] {
                    w.row_f32(r, &mut a).unwrap();
                    whole.row_f32(r, &mut b).unwrap();
                    assert_eq!(a, b, "{format} row {r}");
                }
            }
        }
    }
}
