//! TEMPORARY: plain-loop stand-ins for kernel and processor APIs that have not landed on main yet, written
//! against the agreed signatures of /work/team/API.md. Each item is deleted when its owner's version lands.
//! Trait methods here are shadowed by the real inherent `Kernels` methods as soon as those exist.

#![allow(dead_code)]

use qwen3vl_kernels::{KernelError, Kernels};

fn len(
    op: &'static str,
    what: &'static str,
    expected: usize,
    got: usize,
) -> Result<(), KernelError> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::Len {
            op,
            what,
            expected,
            got,
        })
    }
}

fn rows(op: &'static str, total: usize, n: usize) -> Result<usize, KernelError> {
    if n == 0 || !total.is_multiple_of(n) {
        return Err(KernelError::Invalid {
            op,
            msg: format!("length {total} is not a multiple of the row length {n}"),
        });
    }
    Ok(total / n)
}

fn bf16_round(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let b = x.to_bits();
    let r = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
    f32::from_bits(r)
}

/// Ops of helper A (agreed signatures).
pub(crate) trait OpsShim {
    fn add_assign(&self, acc: &mut [f32], b: &[f32]) -> Result<(), KernelError>;
    fn rms_norm(&self, x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) -> Result<(), KernelError>;
    fn rms_norm_assign(&self, x: &mut [f32], w: &[f32], eps: f32) -> Result<(), KernelError>;
    fn layer_norm(
        &self,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), KernelError>;
    fn gelu_tanh_assign(&self, x: &mut [f32]) -> Result<(), KernelError>;
    fn gelu_erf_assign(&self, x: &mut [f32]) -> Result<(), KernelError>;
    fn swiglu_assign(&self, gate: &mut [f32], up: &[f32]) -> Result<(), KernelError>;
    fn rope_half(
        &self,
        x: &mut [f32],
        heads: usize,
        head_dim: usize,
        cos: &[f32],
        sin: &[f32],
    ) -> Result<(), KernelError>;
}

impl OpsShim for Kernels {
    fn add_assign(&self, acc: &mut [f32], b: &[f32]) -> Result<(), KernelError> {
        len("add_assign", "b", acc.len(), b.len())?;
        for (a, b) in acc.iter_mut().zip(b) {
            *a += b;
        }
        Ok(())
    }

    fn rms_norm(&self, x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) -> Result<(), KernelError> {
        len("rms_norm", "out", x.len(), out.len())?;
        out.copy_from_slice(x);
        self.rms_norm_assign(out, w, eps)
    }

    fn rms_norm_assign(&self, x: &mut [f32], w: &[f32], eps: f32) -> Result<(), KernelError> {
        let n = w.len();
        rows("rms_norm", x.len(), n)?;
        for row in x.chunks_exact_mut(n) {
            let ss: f32 = row.iter().map(|v| v * v).sum::<f32>() / n as f32;
            let inv = 1.0 / (ss + eps).sqrt();
            for (v, w) in row.iter_mut().zip(w) {
                *v = *v * inv * w;
            }
        }
        Ok(())
    }

    fn layer_norm(
        &self,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let n = w.len();
        len("layer_norm", "b", n, b.len())?;
        len("layer_norm", "out", x.len(), out.len())?;
        rows("layer_norm", x.len(), n)?;
        for (row, o) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            let mean = row.iter().sum::<f32>() / n as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for i in 0..n {
                o[i] = (row[i] - mean) * inv * w[i] + b[i];
            }
        }
        Ok(())
    }

    fn gelu_tanh_assign(&self, x: &mut [f32]) -> Result<(), KernelError> {
        const C: f32 = 0.797_884_6; // sqrt(2/pi)
        for v in x.iter_mut() {
            let u = *v;
            *v = 0.5 * u * (1.0 + (C * (u + 0.044715 * u * u * u)).tanh());
        }
        Ok(())
    }

    fn gelu_erf_assign(&self, x: &mut [f32]) -> Result<(), KernelError> {
        for v in x.iter_mut() {
            let u = *v;
            *v = 0.5 * u * (1.0 + libm::erff(u * std::f32::consts::FRAC_1_SQRT_2));
        }
        Ok(())
    }

    fn swiglu_assign(&self, gate: &mut [f32], up: &[f32]) -> Result<(), KernelError> {
        len("swiglu_assign", "up", gate.len(), up.len())?;
        for (g, u) in gate.iter_mut().zip(up) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
        Ok(())
    }

    fn rope_half(
        &self,
        x: &mut [f32],
        heads: usize,
        head_dim: usize,
        cos: &[f32],
        sin: &[f32],
    ) -> Result<(), KernelError> {
        let half = head_dim / 2;
        let r = rows("rope_half", x.len(), heads * head_dim)?;
        len("rope_half", "cos", r * half, cos.len())?;
        len("rope_half", "sin", r * half, sin.len())?;
        for (i, row) in x.chunks_exact_mut(heads * head_dim).enumerate() {
            let c = &cos[i * half..(i + 1) * half];
            let s = &sin[i * half..(i + 1) * half];
            for h in row.chunks_exact_mut(head_dim) {
                for j in 0..half {
                    let (x1, x2) = (h[j], h[j + half]);
                    h[j] = x1 * c[j] - x2 * s[j];
                    h[j + half] = x2 * c[j] + x1 * s[j];
                }
            }
        }
        Ok(())
    }
}

// ---- matmul (helper B) ----

pub enum Weight<'a> {
    Bf16(&'a [u16]),
    F32(&'a [f32]),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulPath {
    Exact,
    Fast,
}

pub struct PackedWeight {
    w: Vec<f32>,
    n: usize,
    k: usize,
}

impl PackedWeight {
    pub fn n(&self) -> usize {
        self.n
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn bytes(&self) -> usize {
        self.w.len() * 4
    }
}

pub(crate) trait MatmulShim {
    fn pack_weight(&self, w: Weight, n: usize, k: usize) -> Result<PackedWeight, KernelError>;
    fn matmul(
        &self,
        x: &[f32],
        m: usize,
        w: &PackedWeight,
        bias: Option<&[f32]>,
        y: &mut [f32],
        path: MatmulPath,
    ) -> Result<(), KernelError>;
}

impl MatmulShim for Kernels {
    fn pack_weight(&self, w: Weight, n: usize, k: usize) -> Result<PackedWeight, KernelError> {
        let w: Vec<f32> = match w {
            Weight::Bf16(b) => {
                len("pack_weight", "w", n * k, b.len())?;
                b.iter()
                    .map(|&b| f32::from_bits((b as u32) << 16))
                    .collect()
            }
            Weight::F32(f) => {
                len("pack_weight", "w", n * k, f.len())?;
                f.to_vec()
            }
        };
        Ok(PackedWeight { w, n, k })
    }

    fn matmul(
        &self,
        x: &[f32],
        m: usize,
        w: &PackedWeight,
        bias: Option<&[f32]>,
        y: &mut [f32],
        path: MatmulPath,
    ) -> Result<(), KernelError> {
        let (n, k) = (w.n, w.k);
        len("matmul", "x", m * k, x.len())?;
        len("matmul", "y", m * n, y.len())?;
        if let Some(b) = bias {
            len("matmul", "bias", n, b.len())?;
        }
        let mut xr = vec![0f32; k];
        for i in 0..m {
            let xi = &x[i * k..(i + 1) * k];
            let xi: &[f32] = if path == MatmulPath::Fast {
                for (d, s) in xr.iter_mut().zip(xi) {
                    *d = bf16_round(*s);
                }
                &xr
            } else {
                xi
            };
            for j in 0..n {
                let wj = &w.w[j * k..(j + 1) * k];
                let mut acc = 0f32;
                for t in 0..k {
                    acc += xi[t] * wj[t];
                }
                y[i * n + j] = acc + bias.map_or(0.0, |b| b[j]);
            }
        }
        Ok(())
    }
}

// ---- attention (helper F) ----

#[derive(Clone, Copy, Debug)]
pub struct AttnLayout {
    pub row_stride: usize,
    pub head_stride: usize,
}

#[derive(Clone, Copy, Debug)]
pub struct AttnParams {
    pub n_q_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub scale: f32,
    pub causal: bool,
}

pub(crate) trait AttnShim {
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &[f32],
        ql: AttnLayout,
        k: &[f32],
        kl: AttnLayout,
        v: &[f32],
        vl: AttnLayout,
        out: &mut [f32],
        p: &AttnParams,
    ) -> Result<(), KernelError>;
}

impl AttnShim for Kernels {
    fn attention(
        &self,
        q: &[f32],
        ql: AttnLayout,
        k: &[f32],
        kl: AttnLayout,
        v: &[f32],
        vl: AttnLayout,
        out: &mut [f32],
        p: &AttnParams,
    ) -> Result<(), KernelError> {
        let hd = p.head_dim;
        len("attention", "out", p.q_len * p.n_q_heads * hd, out.len())?;
        let group = p.n_q_heads / p.n_kv_heads;
        let off = p.kv_len - p.q_len;
        let mut s = vec![0f32; p.kv_len];
        for i in 0..p.q_len {
            for h in 0..p.n_q_heads {
                let g = h / group;
                let qi = &q[i * ql.row_stride + h * ql.head_stride..][..hd];
                let lim = if p.causal {
                    (i + off + 1).min(p.kv_len)
                } else {
                    p.kv_len
                };
                let mut mx = f32::NEG_INFINITY;
                for j in 0..lim {
                    let kj = &k[j * kl.row_stride + g * kl.head_stride..][..hd];
                    let d: f32 = qi.iter().zip(kj).map(|(a, b)| a * b).sum();
                    s[j] = d * p.scale;
                    mx = mx.max(s[j]);
                }
                let mut sum = 0f32;
                for sj in s[..lim].iter_mut() {
                    *sj = (*sj - mx).exp();
                    sum += *sj;
                }
                let o = &mut out[(i * p.n_q_heads + h) * hd..][..hd];
                o.fill(0.0);
                for j in 0..lim {
                    let vj = &v[j * vl.row_stride + g * vl.head_stride..][..hd];
                    let pj = s[j] / sum;
                    for t in 0..hd {
                        o[t] += pj * vj[t];
                    }
                }
            }
        }
        Ok(())
    }
}

// ---- processor (helper C) ----

/// One preprocessed image: rows of `pixel_values` in merge-block order.
#[derive(Clone, Debug)]
pub struct ImageInput {
    /// (N, 1536), N = t·h·w
    pub pixel_values: Vec<f32>,
    /// (t, h, w) in patches
    pub grid_thw: [usize; 3],
}
