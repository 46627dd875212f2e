//! The learned absolute position embedding, bilinearly resampled (align_corners = True) from its square
//! table to each image's patch grid, in merge-block order (spec 3.2; the transformers 5.x fp32 convention).

use crate::config::VisionConfig;
use crate::linear::Vb;
use crate::ModelError;

pub struct PosEmbed {
    /// nn.Embedding weight: (side², D)
    pub weight: Vec<f32>,
    pub side: usize,
    pub dim: usize,
}

/// (row, col) of patch `k` of one frame of width `w` patches, for rows in merge-block order (spec 3.2 step 1).
pub fn patch_row_col(k: usize, w: usize, m: usize) -> (usize, usize) {
    let in_col = k % m;
    let in_row = (k / m) % m;
    let block_col = (k / (m * m)) % (w / m);
    let block_row = k / (m * m * (w / m));
    (block_row * m + in_row, block_col * m + in_col)
}

/// The two taps along one axis and their weights: src = i·(side−1)/max(n−1, 1) in f32.
fn axis_taps(i: usize, n: usize, side: usize) -> ([usize; 2], [f32; 2]) {
    let src = (i as f32 * (side - 1) as f32) / (n.saturating_sub(1).max(1) as f32);
    let f = src.floor();
    let d = src - f;
    let i0 = (f as usize).min(side - 1);
    ([i0, (i0 + 1).min(side - 1)], [1.0 - d, d])
}

impl PosEmbed {
    pub(crate) fn load(vb: &Vb, cfg: &VisionConfig) -> Result<PosEmbed, ModelError> {
        let (n, d) = (cfg.num_position_embeddings, cfg.hidden_size);
        Ok(PosEmbed {
            weight: {
                let t = vb.tensor("weight", &[n, d])?;
                let w = t.to_f32()?;
                t.release();
                w
            },
            side: cfg.grid_side(),
            dim: d,
        })
    }

    /// grids: (t, h, w) per image -> out: (Σ t·h·w, D), the interpolated embedding of every patch.
    pub fn forward(&self, grids: &[[usize; 3]], merge: usize, out: &mut [f32]) {
        let (side, d) = (self.side, self.dim);
        let mut rows = out.chunks_exact_mut(d);
        for &[t, h, w] in grids {
            for _frame in 0..t {
                // 5. video: the same per-frame embedding repeats t times.
                for k in 0..h * w {
                    let o = rows.next().expect("out holds Σ t·h·w rows");
                    // 1.-3. (row, col), the source coordinates, the corner taps and their weights.
                    let (row, col) = patch_row_col(k, w, merge);
                    let (rt, rw) = axis_taps(row, h, side);
                    let (ct, cw) = axis_taps(col, w, side);
                    let taps = [
                        (rt[0] * side + ct[0], rw[0] * cw[0]),
                        (rt[0] * side + ct[1], rw[0] * cw[1]),
                        (rt[1] * side + ct[0], rw[1] * cw[0]),
                        (rt[1] * side + ct[1], rw[1] * cw[1]),
                    ];
                    // 4. pe = Σ T[tap]·weight, in fp32.
                    o.fill(0.0);
                    for (idx, wt) in taps {
                        let src = &self.weight[idx * d..(idx + 1) * d];
                        for (o, s) in o.iter_mut().zip(src) {
                            *o += s * wt;
                        }
                    }
                }
            }
        }
    }
}
