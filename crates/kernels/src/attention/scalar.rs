//! The reference attention: plain loops, one (query row, head) at a time, two-pass softmax in f32.
//! Arguments were validated by `Kernels::attention`.

use super::{AttnLayout, AttnParams};

/// q: (q_len, n_q_heads, hd) via `ql`; k, v: (kv_len, n_kv_heads, hd) via `kl`, `vl`;
/// out: (q_len, n_q_heads, hd) contiguous.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    q: &[f32],
    ql: AttnLayout,
    k: &[f32],
    kl: AttnLayout,
    v: &[f32],
    vl: AttnLayout,
    out: &mut [f32],
    p: &AttnParams,
) {
    let hd = p.head_dim;
    let group = p.n_q_heads / p.n_kv_heads;
    let mut scores = vec![0.0f32; p.kv_len];
    for i in 0..p.q_len {
        // keys visible to row i: j < n
        let n = if p.causal {
            i + (p.kv_len - p.q_len) + 1
        } else {
            p.kv_len
        };
        for h in 0..p.n_q_heads {
            let g = h / group;
            let qi = &q[i * ql.row_stride + h * ql.head_stride..][..hd];
            // 1. s_j = scale · q_i·k_j
            for (j, s) in scores[..n].iter_mut().enumerate() {
                let kj = &k[j * kl.row_stride + g * kl.head_stride..][..hd];
                let mut dot = 0.0f32;
                for d in 0..hd {
                    dot += qi[d] * kj[d];
                }
                *s = p.scale * dot;
            }
            // 2. m = max_j s_j;  p_j = exp(s_j − m);  l = Σ_j p_j
            let m = scores[..n]
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            let mut l = 0.0f32;
            for s in &mut scores[..n] {
                *s = (*s - m).exp();
                l += *s;
            }
            // 3. out_i = Σ_j p_j v_j / l
            let o = &mut out[(i * p.n_q_heads + h) * hd..][..hd];
            o.fill(0.0);
            for (j, &pj) in scores[..n].iter().enumerate() {
                let vj = &v[j * vl.row_stride + g * vl.head_stride..][..hd];
                for d in 0..hd {
                    o[d] += pj * vj[d];
                }
            }
            for x in o.iter_mut() {
                *x /= l;
            }
        }
    }
}
