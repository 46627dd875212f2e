//! `Model::plan()`: what runs for each op of the loaded model — the kernel, the weight layout and the
//! memory it holds (the `qwen3vl plan` command prints it).

use std::fmt;

use crate::linear::{Linear, LinearWeight};
use crate::model::Model;
use crate::weights::Dtype;
use qwen3vl_kernels::attention::AttnParams;
use qwen3vl_kernels::matmul::MatmulPath;

/// One op of the forward pass (repeated `count` times: once per layer/block that has it).
#[derive(Clone, Debug)]
pub struct PlanOp {
    /// where it runs, e.g. `language_model.layers.*.self_attn`
    pub scope: String,
    /// the op, e.g. `q_proj (2048 <- 2048)`
    pub op: String,
    /// the kernel that runs it
    pub kernel: String,
    /// how its weights are stored
    pub layout: String,
    /// bytes of weights held per instance
    pub bytes: u64,
    pub count: usize,
}

/// The printable plan of a loaded model.
#[derive(Clone, Debug)]
pub struct Plan {
    pub isa: String,
    pub threads: usize,
    pub precision: String,
    pub ops: Vec<PlanOp>,
    /// KV cache bytes per token of context (f32 K and V of every layer)
    pub kv_bytes_per_token: u64,
}

impl Plan {
    /// Bytes of all weights the model holds in memory (packed copies and f32 vectors; the mmapped
    /// embedding table is not counted: only the rows read become resident).
    pub fn weight_bytes(&self) -> u64 {
        self.ops.iter().map(|o| o.bytes * o.count as u64).sum()
    }
}

/// `language_model.layers.*` when `layers` are all `n` layers, else the list (`language_model.layers.{0,2}`).
fn layer_scope(layers: &[usize], n: usize) -> String {
    if layers.len() == n {
        "language_model.layers.*".into()
    } else {
        let list: Vec<String> = layers.iter().map(|l| l.to_string()).collect();
        format!("language_model.layers.{{{}}}", list.join(","))
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "isa {}, {} threads, precision {}",
            self.isa, self.threads, self.precision
        )?;
        // Column widths fit the longest entry of each column.
        let w = |h: &str, col: &dyn Fn(&PlanOp) -> usize| {
            self.ops.iter().map(col).chain([h.len()]).max().unwrap_or(0)
        };
        let ws = w("scope", &|o| o.scope.chars().count());
        let wo = w("op", &|o| o.op.chars().count());
        let wk = w("kernel", &|o| o.kernel.chars().count());
        let wl = w("weight layout", &|o| o.layout.chars().count());
        writeln!(
            f,
            "{:<ws$}  {:<wo$}  {:>5}  {:<wk$}  {:<wl$}  {:>12}",
            "scope", "op", "count", "kernel", "weight layout", "memory"
        )?;
        for o in &self.ops {
            writeln!(
                f,
                "{:<ws$}  {:<wo$}  {:>5}  {:<wk$}  {:<wl$}  {:>12}",
                o.scope,
                o.op,
                o.count,
                o.kernel,
                o.layout,
                mib(o.bytes * o.count as u64)
            )?;
        }
        writeln!(f, "weights held: {}", mib(self.weight_bytes()))?;
        writeln!(
            f,
            "KV cache: {} per token of context (f32)",
            mib(self.kv_bytes_per_token)
        )
    }
}

impl Model {
    /// The kernel, weight layout and memory of each op of the loaded model.
    pub fn plan(&self) -> Plan {
        let k = self.kernels();
        let mm_path = self.matmul_path();
        let path = format!("{mm_path:?}");
        // What a prefill-shaped attention call runs on this CPU (the kernels decide; see attention_precision).
        let attn_arith = |p: &AttnParams| match k.attention_precision(p) {
            MatmulPath::Fast => "bf16 vdpbf16ps + f32 softmax",
            MatmulPath::Exact => "f32",
        };
        let mut ops = Vec::new();
        let lin = |scope: &str, name: &str, l: &Linear, count: usize| {
            let bias_bytes = l.bias.as_ref().map_or(0, |b| b.len() * 4) as u64;
            let bias = if l.bias.is_some() { " + f32 bias" } else { "" };
            let op = format!("{name} ({} <- {})", l.out_features, l.in_features);
            let (kernel, layout) = match &l.weight {
                LinearWeight::Packed(w) => {
                    let dt = if w.is_bf16() { "bf16" } else { "f32" };
                    (
                        if w.is_swiglu() {
                            format!("matmul {path} + SwiGLU epilogue, {} threads", k.threads())
                        } else {
                            format!("matmul {path}, {} threads", k.threads())
                        },
                        format!(
                            "packed {dt} panels for {:?} ({}x{}){}{}",
                            w.isa(),
                            if w.is_swiglu() { 2 * w.n() } else { w.n() },
                            w.k(),
                            if w.is_swiglu() {
                                ", gate|up rows interleaved per half-group"
                            } else {
                                bias
                            },
                            if w.is_shared() {
                                ", mapped from the weight cache"
                            } else {
                                ""
                            }
                        ),
                    )
                }
                LinearWeight::Quant(w) | LinearWeight::QuantSwiGlu(w) => {
                    let swiglu = matches!(l.weight, LinearWeight::QuantSwiGlu(_));
                    (
                        format!(
                            "{}{}, {} threads",
                            k.quant_path_description(w.format(), mm_path),
                            if swiglu { " + swiglu" } else { "" },
                            k.threads()
                        ),
                        format!(
                            "{} rows ({}x{}, k padded to {}), {} ({} bits/weight){}",
                            w.format(),
                            w.n(),
                            w.k(),
                            w.format().padded(w.k()),
                            w.format().describe(),
                            w.format().bits_per_weight(),
                            if swiglu {
                                ", gate rows then up rows"
                            } else {
                                bias
                            }
                        ),
                    )
                }
            };
            PlanOp {
                scope: scope.into(),
                op,
                kernel,
                layout,
                bytes: l.weight.bytes() as u64 + bias_bytes,
                count,
            }
        };
        let vec_op = |scope: &str, name: &str, kernel: &str, floats: usize, count: usize| PlanOp {
            scope: scope.into(),
            op: name.into(),
            kernel: kernel.into(),
            layout: if floats == 0 {
                "-".into()
            } else {
                format!("f32 ({floats})")
            },
            bytes: floats as u64 * 4,
            count,
        };

        // vision tower
        let v = &self.visual;
        ops.push(lin("visual.patch_embed", "proj", &v.patch_embed.proj, 1));
        ops.push(PlanOp {
            scope: "visual.pos_embed".into(),
            op: format!("bilinear ({}x{} grid)", v.pos_embed.side, v.pos_embed.side),
            kernel: "scalar interpolation".into(),
            layout: format!("f32 ({}, {})", v.pos_embed.side.pow(2), v.pos_embed.dim),
            bytes: v.pos_embed.weight.len() as u64 * 4,
            count: 1,
        });
        if let Some(b) = v.blocks.first() {
            let (s, n) = ("visual.blocks.*", v.blocks.len());
            let ln = b.norm1.weight.len() * 2;
            ops.push(vec_op(s, "norm1", "layer_norm", ln, n));
            ops.push(lin(s, "attn.qkv", &b.attn.qkv, n));
            ops.push(vec_op(
                s,
                "rope q,k (2-D, on the fused qkv rows)",
                "rope_half_rows",
                0,
                n,
            ));
            let p = AttnParams {
                n_q_heads: b.attn.num_heads,
                n_kv_heads: b.attn.num_heads,
                head_dim: b.attn.head_dim,
                q_len: 1024,
                kv_len: 1024,
                scale: 1.0,
                causal: false,
                path: mm_path,
            };
            let kernel = format!("attention, flash non-causal, {}", attn_arith(&p));
            ops.push(vec_op(
                s,
                "attention (per image, on the fused qkv)",
                &kernel,
                0,
                n,
            ));
            ops.push(lin(s, "attn.proj", &b.attn.proj, n));
            ops.push(vec_op(s, "norm2", "layer_norm", ln, n));
            ops.push(lin(s, "mlp.linear_fc1", &b.mlp.linear_fc1, n));
            ops.push(vec_op(s, "gelu_tanh", "gelu_tanh", 0, n));
            ops.push(lin(s, "mlp.linear_fc2", &b.mlp.linear_fc2, n));
        }
        for (name, m, count) in [
            ("visual.merger", Some(&v.merger), 1),
            (
                "visual.deepstack_merger_list.*",
                v.deepstack_merger_list.first(),
                v.deepstack_merger_list.len(),
            ),
        ] {
            if let Some(m) = m {
                ops.push(vec_op(
                    name,
                    "norm",
                    "layer_norm",
                    m.norm.weight.len() * 2,
                    count,
                ));
                ops.push(lin(name, "linear_fc1", &m.linear_fc1, count));
                ops.push(vec_op(name, "gelu_erf", "gelu_erf", 0, count));
                ops.push(lin(name, "linear_fc2", &m.linear_fc2, count));
            }
        }

        // text decoder
        let t = &self.language_model;
        let e = &t.embed_tokens;
        let dt = match e.dtype {
            Dtype::BF16 => "bf16",
            Dtype::F16 => "f16",
            _ => "f32",
        };
        ops.push(PlanOp {
            scope: "language_model.embed_tokens".into(),
            op: "row lookup".into(),
            kernel: "widen rows to f32".into(),
            layout: if t.embed_from_lm_head {
                format!("tied: rows gathered from the packed lm_head {:?}", e.shape)
            } else {
                format!("mmapped {dt} {:?}, rows read on demand", e.shape)
            },
            bytes: 0,
            count: 1,
        });
        if let Some(l) = t.layers.first() {
            let (s, n) = ("language_model.layers.*", t.layers.len());
            let a = &l.self_attn;
            let h = l.input_layernorm.weight.len();
            ops.push(vec_op(s, "input_layernorm", "rms_norm", h, n));
            ops.push(lin(
                s,
                "self_attn.q|k|v_proj (k, v -> KV cache)",
                &a.qkv_proj,
                n,
            ));
            ops.push(vec_op(
                s,
                "q_norm, k_norm + M-RoPE q,k (k -> KV cache)",
                "rms_norm_rope_half (one pass per head)",
                a.head_dim * 2,
                n,
            ));
            let p = AttnParams {
                n_q_heads: a.num_heads,
                n_kv_heads: a.num_kv_heads,
                head_dim: a.head_dim,
                q_len: 512,
                kv_len: 512,
                scale: 1.0,
                causal: true,
                path: mm_path,
            };
            let kernel = format!(
                "attention, flash causal: prefill {}; decode f32, split-KV",
                attn_arith(&p)
            );
            let name = format!("attention GQA {}/{} heads", a.num_heads, a.num_kv_heads);
            ops.push(vec_op(s, &name, &kernel, 0, n));
            ops.push(lin(s, "self_attn.o_proj", &a.o_proj, n));
            ops.push(vec_op(s, "post_attention_layernorm", "rms_norm", h, n));
            // the dense MLPs, then the sparse MoE blocks (spec 1.3), each with the layers that have it
            let dense: Vec<usize> = (0..n)
                .filter(|&i| t.layers[i].mlp.dense().is_some())
                .collect();
            let sparse: Vec<usize> = (0..n)
                .filter(|&i| t.layers[i].mlp.sparse().is_some())
                .collect();
            if let Some(m) = dense.first().and_then(|&i| t.layers[i].mlp.dense()) {
                let s = layer_scope(&dense, n);
                let nd = dense.len();
                ops.push(lin(
                    &s,
                    "mlp.gate|up_proj -> silu(gate)*up",
                    &m.gate_up_proj,
                    nd,
                ));
                ops.push(lin(&s, "mlp.down_proj", &m.down_proj, nd));
            }
            if let Some(b) = sparse.first().and_then(|&i| t.layers[i].mlp.sparse()) {
                let s = layer_scope(&sparse, n);
                let (ns, e, k) = (sparse.len(), b.experts.gate_up_proj.len(), b.top_k());
                let mut router = lin(
                    &s,
                    &format!(
                        "mlp.gate (router: f32 logits, softmax, top-{k} of {e}, renormalized)"
                    ),
                    &b.gate.weight,
                    ns,
                );
                router.kernel = router.kernel.replace(&path, "Exact");
                ops.push(router);
                let [l_gu, l_down] = b.experts.layout;
                let run = format!(
                    "k = {k} of {e} experts per token: decode k GEMVs, prefill one GEMM per expert over its tokens"
                );
                let mut gu = lin(
                    &s,
                    &format!("mlp.experts.*.gate_up_proj -> silu(gate)*up (stored {l_gu:?})"),
                    &b.experts.gate_up_proj[0],
                    ns * e,
                );
                gu.kernel = format!("{}; {run}", gu.kernel);
                ops.push(gu);
                ops.push(lin(
                    &s,
                    &format!("mlp.experts.*.down_proj, weighted sum (stored {l_down:?})"),
                    &b.experts.down_proj[0],
                    ns * e,
                ));
            }
        }
        ops.push(vec_op(
            "language_model.norm",
            "norm",
            "rms_norm",
            t.norm.weight.len(),
            1,
        ));
        ops.push(lin("lm_head", "lm_head", &self.lm_head, 1));

        let tc = &self.config().text;
        Plan {
            isa: format!("{:?}", k.isa()),
            threads: k.threads(),
            precision: format!("{:?}", self.precision()),
            ops,
            kv_bytes_per_token: (tc.num_hidden_layers
                * 2
                * tc.num_key_value_heads
                * tc.head_dim
                * 4) as u64,
        }
    }
}
