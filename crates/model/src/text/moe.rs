//! Qwen3VLMoeTextSparseMoeBlock: a router over E experts; each token runs through its top-k experts'
//! SwiGLU MLPs, weighted by its renormalized router probabilities (spec 1.3). There is no shared expert.
//!
//! The experts are stored fused, as one 3-D tensor per projection, in one of two layouts:
//! - released checkpoints: `mlp.experts.gate_up_proj` (E, H, 2I) and `mlp.experts.down_proj` (E, I, H),
//!   used as `x @ W`;
//! - transformers 5.x (what it saves): (E, 2I, H) and (E, H, I), i.e. `nn.Linear` rows per expert.
//!
//! A tensor is taken as is when it has the transformers layout and transposed when it has the released one
//! (transformers' `Transpose(1, 2, check_dims=True)`: the shape against the config decides; a square one is
//! taken as is). Quantized checkpoints store the transformers layout's rows: U8 (E·2I, row bytes) and
//! (E·H, row bytes). Each expert becomes two ordinary [`Linear`]s (a SwiGLU gate|up pair and down), so
//! every weight format of the dense linears (packed bf16/f32, q8, later ones) works for experts unchanged.

use std::sync::Mutex;

use qwen3vl_kernels::matmul::{MatmulPath, Weight};
use qwen3vl_kernels::quant::QuantWeight;

use crate::config::{MoeConfig, TextConfig};
use crate::linear::{Ctx, Linear, LinearWeight, Vb};
use crate::model::top_k;
use crate::weights::{Dtype, StoredQuant, TensorRef};
use crate::{KernelCtx, ModelError};

/// Qwen3VLMoeTextTopKRouter: `mlp.gate.weight` (E, H), no bias.
pub struct TextTopKRouter {
    /// (E, H), packed (never quantized); run on the exact f32 path whatever the precision, so the
    /// discrete choice of experts does not move with bf16 rounding of the weights' products
    pub weight: Linear,
    /// k
    pub top_k: usize,
}

/// How a checkpoint stored the fused expert tensors (shown by `qwen3vl plan`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertLayout {
    /// (E, H, 2I) and (E, I, H), transposed at load
    Released,
    /// (E, 2I, H) and (E, H, I), taken as they are
    Transformers,
    /// quantized rows of the transformers layout (a `qwen3vl quantize` / `init-random --quant` checkpoint)
    Quantized,
}

/// Qwen3VLMoeTextExperts: E SwiGLU MLPs.
pub struct TextExperts {
    /// per expert: gate (I, H) and up (I, H) as one SwiGLU pair: its matmul writes silu(gate)·up (l, I)
    pub gate_up_proj: Vec<Linear>,
    /// per expert: (H, I)
    pub down_proj: Vec<Linear>,
    /// the stored layout of gate_up_proj and of down_proj
    pub layout: [ExpertLayout; 2],
}

pub struct TextSparseMoeBlock {
    pub gate: TextTopKRouter,
    pub experts: TextExperts,
}

/// Per-call buffers of the MoE block (in the caller's RunState).
#[derive(Default)]
pub(crate) struct MoeScratch {
    /// (m, E) router logits, then probabilities
    pub probs: Vec<f32>,
    /// (m·k) the routed (row, weight) pairs grouped by expert (expert e's are `routes[start[e]..start[e+1]]`)
    pub routes: Vec<(u32, f32)>,
    /// (E + 1) offsets into `routes`
    pub start: Vec<usize>,
    /// (n_e, H) the rows routed to one expert, gathered
    pub xs: Vec<f32>,
    /// (n_e, I)
    pub act: Vec<f32>,
    /// (n_e, H)
    pub ys: Vec<f32>,
}

impl MoeScratch {
    pub fn resize(&mut self, m: usize, h: usize, moe: &MoeConfig) {
        let (e, k, i) = (
            moe.num_experts,
            moe.num_experts_per_tok,
            moe.moe_intermediate_size,
        );
        self.probs.resize(m * e, 0.0);
        self.routes.resize(m * k, (0, 0.0));
        self.start.resize(e + 1, 0);
        // the expert-parallel path (m ≤ PARALLEL_ROWS) keeps every route's row: m·k rows
        let rows = m.max(m.min(PARALLEL_ROWS) * k);
        self.xs.resize(rows * h, 0.0);
        self.act.resize(rows * i, 0.0);
        self.ys.resize(rows * h, 0.0);
    }
}

/// Calls of at most this many rows (decode) run their experts in parallel, one expert per thread at a time
/// (one fork/join per layer instead of two per expert); larger ones run one expert after the other, each
/// matmul threaded over its output rows.
const PARALLEL_ROWS: usize = 4;

/// Writes the (cols, rows) transpose of `src` (rows, cols) into `dst`.
fn transpose<T: Copy>(src: &[T], rows: usize, cols: usize, dst: &mut Vec<T>) {
    dst.clear();
    dst.extend((0..cols * rows).map(|i| src[(i % rows) * cols + i / rows]));
}

/// `w` split after its first `at` values (a SwiGLU pair's gate rows, then its up rows: the packers take
/// them as two parts).
fn split_rows(w: Weight, at: usize) -> (Weight, Weight) {
    match w {
        Weight::Bf16(v) => (Weight::Bf16(&v[..at]), Weight::Bf16(&v[at..])),
        Weight::F32(v) => (Weight::F32(&v[..at]), Weight::F32(&v[at..])),
    }
}

/// One fused expert tensor, read as floats: its values and which layout it has.
struct Fused<'a> {
    t: &'a TensorRef,
    bits: Option<std::borrow::Cow<'a, [u16]>>,
    f32s: Vec<f32>,
    layout: ExpertLayout,
}

impl<'a> Fused<'a> {
    /// `t` must be (E, a, b) (transformers layout: a rows of b per expert) or (E, b, a) (released).
    fn new(t: &'a TensorRef, e: usize, a: usize, b: usize) -> Result<Fused<'a>, ModelError> {
        let layout = if t.shape == [e, a, b] {
            ExpertLayout::Transformers
        } else if t.shape == [e, b, a] {
            ExpertLayout::Released
        } else {
            return Err(ModelError::MissingTensor {
                key: t.key.clone(),
                msg: format!(
                    "shape {:?} is neither the transformers layout {:?} nor the released layout {:?} \
                     (E and the sizes from config.json)",
                    t.shape,
                    [e, a, b],
                    [e, b, a]
                ),
            });
        };
        let bits = t.bf16_bits();
        let f32s = match (&bits, t.dtype) {
            (Some(_), _) => Vec::new(),
            (None, Dtype::F32 | Dtype::F16) => t.to_f32()?,
            (None, d) => {
                return Err(ModelError::Dtype {
                    key: t.key.clone(),
                    msg: format!("{d:?} is not supported (BF16, F16 or F32)"),
                })
            }
        };
        Ok(Fused {
            t,
            bits,
            f32s,
            layout,
        })
    }

    /// Expert `x`'s (a, b) rows as a packer input; `tmp16` / `tmp32` hold a transposed copy.
    fn expert<'s>(
        &'s self,
        x: usize,
        a: usize,
        b: usize,
        tmp16: &'s mut Vec<u16>,
        tmp32: &'s mut Vec<f32>,
    ) -> Weight<'s> {
        let r = x * a * b..(x + 1) * a * b;
        let released = self.layout == ExpertLayout::Released;
        match &self.bits {
            Some(bits) if released => {
                transpose(&bits[r], b, a, tmp16);
                Weight::Bf16(tmp16)
            }
            Some(bits) => Weight::Bf16(&bits[r]),
            None if released => {
                transpose(&self.f32s[r], b, a, tmp32);
                Weight::F32(tmp32)
            }
            None => Weight::F32(&self.f32s[r]),
        }
    }
}

impl TextExperts {
    /// A quantized checkpoint's experts: `gu_key` U8 (E·2I, row bytes of H) and `down_key` U8 (E·H, row
    /// bytes of I), with their `_scale` tensors; each expert's rows become its own quantized weights.
    fn load_quantized(
        vb: &Vb,
        gu_key: &str,
        down_key: &str,
        h: usize,
        e: usize,
        i: usize,
    ) -> Result<TextExperts, ModelError> {
        let mut parts = Vec::with_capacity(2);
        for (key, rows, kk) in [(gu_key, 2 * i, h), (down_key, h, i)] {
            let StoredQuant {
                format,
                values: t,
                scales,
                d,
            } = vb.w.quantized(key, e * rows, kk)?;
            let (rb, nb) = (format.row_bytes(kk), format.row_scales(kk));
            let ((vo, v0), (so, s0)) = (t.in_place(), scales.in_place());
            let mut ws = Vec::with_capacity(e);
            let mut copied = false;
            for x in 0..e {
                // each expert's rows in place (64-byte-aligned, as `qwen3vl quantize` writes them), else copied
                let at = |o: usize, row: usize| o + x * rows * row;
                if let Ok(w) = QuantWeight::from_shared(
                    format,
                    rows,
                    kk,
                    (vo.clone(), at(v0, rb)),
                    (so.clone(), at(s0, nb * 4)),
                ) {
                    ws.push(w);
                    continue;
                }
                copied = true;
                let ctx = format!("{key}[{x}]");
                let mut p = vb.k.quant_packer(format, rows, kk).ctx(&ctx)?;
                p.push_quantized(
                    &t.bytes()[x * rows * rb..(x + 1) * rows * rb],
                    &d[x * rows * nb..(x + 1) * rows * nb],
                    rows,
                )
                .ctx(&ctx)?;
                ws.push(p.finish().ctx(&ctx)?);
            }
            vb.tick(&t);
            if copied {
                t.release();
            }
            parts.push(ws);
        }
        let down = parts.pop().expect("two parts");
        let gu = parts.pop().expect("two parts");
        Ok(TextExperts {
            gate_up_proj: gu
                .into_iter()
                .map(|w| Linear {
                    weight: LinearWeight::QuantSwiGlu(w),
                    bias: None,
                    out_features: i,
                    in_features: h,
                })
                .collect(),
            down_proj: down
                .into_iter()
                .map(|w| Linear {
                    weight: LinearWeight::Quant(w),
                    bias: None,
                    out_features: h,
                    in_features: i,
                })
                .collect(),
            layout: [ExpertLayout::Quantized; 2],
        })
    }
}

impl TextSparseMoeBlock {
    pub(crate) fn load(
        vb: &Vb,
        cfg: &TextConfig,
        moe: &MoeConfig,
    ) -> Result<TextSparseMoeBlock, ModelError> {
        let (h, e, i) = (cfg.hidden_size, moe.num_experts, moe.moe_intermediate_size);
        let gate = TextTopKRouter {
            weight: vb.with_quant(None).linear("gate", e, h, false)?,
            top_k: moe.num_experts_per_tok,
        };
        let ex = vb.pp("experts");
        let (gu_key, down_key) = (ex.key("gate_up_proj"), ex.key("down_proj"));
        let experts = match (vb.w.is_quantized(&gu_key), vb.w.is_quantized(&down_key)) {
            (true, true) => TextExperts::load_quantized(vb, &gu_key, &down_key, h, e, i)?,
            (false, false) => {
                let gu = vb.w.raw(&gu_key)?;
                let down = vb.w.raw(&down_key)?;
                let f_gu = Fused::new(&gu, e, 2 * i, h)?;
                let f_down = Fused::new(&down, e, h, i)?;
                let (mut t16, mut t32) = (Vec::new(), Vec::new());
                let mut gate_up_proj = Vec::with_capacity(e);
                let mut down_proj = Vec::with_capacity(e);
                for x in 0..e {
                    // gate rows [0, I) then up rows [I, 2I) of expert x: `.chunk(2, dim=-1)` of its output
                    let w = f_gu.expert(x, 2 * i, h, &mut t16, &mut t32);
                    let (gate, up) = split_rows(w, i * h);
                    let what = format!("{gu_key}[{x}]");
                    gate_up_proj.push(Linear {
                        weight: ex.weight_from_rows(
                            &[(gate, i), (up, i)],
                            2 * i,
                            h,
                            true,
                            &what,
                        )?,
                        bias: None,
                        out_features: i,
                        in_features: h,
                    });
                    let w = f_down.expert(x, h, i, &mut t16, &mut t32);
                    let what = format!("{down_key}[{x}]");
                    down_proj.push(Linear {
                        weight: ex.weight_from_rows(&[(w, h)], h, i, false, &what)?,
                        bias: None,
                        out_features: h,
                        in_features: i,
                    });
                }
                for f in [&f_gu, &f_down] {
                    vb.tick(f.t);
                    f.t.release();
                }
                TextExperts {
                    gate_up_proj,
                    down_proj,
                    layout: [f_gu.layout, f_down.layout],
                }
            }
            (q_gu, _) => {
                let (float, quant) = if q_gu {
                    (&down_key, &gu_key)
                } else {
                    (&gu_key, &down_key)
                };
                return Err(ModelError::Dtype {
                    key: float.clone(),
                    msg: format!(
                        "stored as floats while {quant} is quantized (both expert tensors must match)"
                    ),
                });
            }
        };
        Ok(TextSparseMoeBlock { gate, experts })
    }

    /// Experts per token (k).
    pub fn top_k(&self) -> usize {
        self.gate.top_k
    }

    /// Bytes of all experts' weights.
    pub fn expert_bytes(&self) -> u64 {
        let ex = &self.experts;
        ex.gate_up_proj
            .iter()
            .chain(&ex.down_proj)
            .map(|l| l.weight.bytes() as u64)
            .sum()
    }

    /// x: (m, H) -> out: (m, H)
    pub(crate) fn forward(
        &self,
        c: &Ctx,
        x: &[f32],
        m: usize,
        s: &mut MoeScratch,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        let ex = &self.experts;
        let (e, k) = (ex.gate_up_proj.len(), self.gate.top_k);
        let h = self.gate.weight.in_features;
        // 1. router_logits = F.linear(x, gate.weight) in f32                                 (m, E)
        let exact = Ctx {
            k: c.k,
            path: MatmulPath::Exact,
        };
        let probs = &mut s.probs[..m * e];
        self.gate.weight.forward(&exact, x, m, probs)?;
        // 2. p = softmax(logits, dtype=float); top-k; p_top /= p_top.sum()                   (m, k)
        c.k.softmax_assign(probs, e, 1.0, None)
            .ctx("router softmax")?;
        // 3. group the (row, weight) pairs by expert (a counting sort: rows ascending within an expert)
        let start = &mut s.start[..e + 1];
        start.fill(0);
        let routes = &mut s.routes[..m * k];
        let mut picked = Vec::with_capacity(m * k);
        for p in probs.chunks_exact(e) {
            let top = top_k(p, k);
            let sum: f32 = top.iter().map(|t| t.1).sum();
            for (x, v) in top {
                start[x + 1] += 1;
                picked.push((x, v / sum));
            }
        }
        for x in 0..e {
            start[x + 1] += start[x];
        }
        let mut fill = start[..e].to_vec();
        for (j, &(x, w)) in picked.iter().enumerate() {
            routes[fill[x]] = ((j / k) as u32, w);
            fill[x] += 1;
        }
        // 4. out = Σ over the hit experts (ascending, as transformers adds them) of
        //    w · down_e(silu(gate_e(x_rows)) ⊙ up_e(x_rows)): one matmul per expert over its rows
        out[..m * h].fill(0.0);
        if m <= PARALLEL_ROWS {
            return self.experts_parallel(c, x, m, s, out);
        }
        for ei in 0..e {
            let rs = &routes[start[ei]..start[ei + 1]];
            let n = rs.len();
            if n == 0 {
                continue;
            }
            let (gu, down) = (&ex.gate_up_proj[ei], &ex.down_proj[ei]);
            let i = down.in_features;
            let xs = &mut s.xs[..n * h];
            for (dst, &(r, _)) in xs.chunks_exact_mut(h).zip(rs) {
                let r = r as usize;
                dst.copy_from_slice(&x[r * h..(r + 1) * h]);
            }
            gu.forward(c, xs, n, &mut s.act[..n * i])?;
            down.forward(c, &s.act[..n * i], n, &mut s.ys[..n * h])?;
            for (y, &(r, w)) in s.ys[..n * h].chunks_exact(h).zip(rs) {
                let r = r as usize;
                for (o, &y) in out[r * h..(r + 1) * h].iter_mut().zip(y) {
                    *o += y * w;
                }
            }
        }
        Ok(())
    }

    /// Step 4 of [`Self::forward`] for a few rows (decode): the hit experts spread over the threads, each
    /// run on one thread over its rows, then summed into `out` (zeroed) in the serial path's order.
    fn experts_parallel(
        &self,
        c: &Ctx,
        x: &[f32],
        m: usize,
        s: &mut MoeScratch,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        let ex = &self.experts;
        let (e, k) = (ex.gate_up_proj.len(), self.gate.top_k);
        let h = self.gate.weight.in_features;
        let i = ex.down_proj.first().map_or(0, |d| d.in_features);
        let (start, routes) = (&s.start[..e + 1], &s.routes[..m * k]);
        // every route's input row, in route order (expert ascending)                     (m·k, H)
        for (dst, &(r, _)) in s.xs[..m * k * h].chunks_exact_mut(h).zip(routes) {
            let r = r as usize;
            dst.copy_from_slice(&x[r * h..(r + 1) * h]);
        }
        let xs = &s.xs[..m * k * h];
        // one task per hit expert, each with its own rows of act (n_e, I) and ys (n_e, H)
        let (mut act, mut ys) = (&mut s.act[..m * k * i], &mut s.ys[..m * k * h]);
        let mut tasks = Vec::with_capacity(k);
        for ei in 0..e {
            let n = start[ei + 1] - start[ei];
            if n == 0 {
                continue;
            }
            let (a, rest_a) = std::mem::take(&mut act).split_at_mut(n * i);
            let (y, rest_y) = std::mem::take(&mut ys).split_at_mut(n * h);
            (act, ys) = (rest_a, rest_y);
            tasks.push(Mutex::new((ei, a, y)));
        }
        let one = Ctx {
            k: c.k.with_threads(1),
            path: c.path,
        };
        let failed = Mutex::new(None);
        c.k.parallel_for(tasks.len(), &|t| {
            let mut g = tasks[t].lock().unwrap_or_else(|p| p.into_inner());
            let (ei, a, y) = &mut *g;
            let (n, r0) = (start[*ei + 1] - start[*ei], start[*ei]);
            let xe = &xs[r0 * h..(r0 + n) * h];
            let run = ex.gate_up_proj[*ei]
                .forward(&one, xe, n, a)
                .and_then(|()| ex.down_proj[*ei].forward(&one, a, n, y));
            if let Err(err) = run {
                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
            }
        });
        if let Some(err) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(err);
        }
        // out[r] += w · y, routes in order (expert ascending, as the serial path adds them)
        for (y, &(r, w)) in s.ys[..m * k * h].chunks_exact(h).zip(routes) {
            let r = r as usize;
            for (o, &y) in out[r * h..(r + 1) * h].iter_mut().zip(y) {
                *o += y * w;
            }
        }
        Ok(())
    }
}
