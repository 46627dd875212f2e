//! Qwen3VLVisionPatchMerger: 2×2 patch merge + MLP. The final `merger` normalizes each patch (LN over D)
//! before the shuffle; the `deepstack_merger_list` ones normalize after it (LN over 4D) (spec 3.5, 3.6).

use crate::config::VisionConfig;
use crate::linear::{Ctx, Linear, Vb};
use crate::norm::LayerNorm;
use crate::vision::block::VISION_LN_EPS;
use crate::ModelError;

pub struct PatchMerger {
    /// LayerNorm over D (final merger) or 4D (deepstack mergers)
    pub norm: LayerNorm,
    /// (4D, 4D)
    pub linear_fc1: Linear,
    /// (O, 4D)
    pub linear_fc2: Linear,
    pub use_postshuffle_norm: bool,
}

impl PatchMerger {
    pub(crate) fn load(
        vb: &Vb,
        cfg: &VisionConfig,
        use_postshuffle_norm: bool,
    ) -> Result<PatchMerger, ModelError> {
        let dm = cfg.hidden_size * cfg.merge_unit();
        let norm_dim = if use_postshuffle_norm {
            dm
        } else {
            cfg.hidden_size
        };
        Ok(PatchMerger {
            norm: vb.layer_norm("norm", norm_dim, VISION_LN_EPS)?,
            linear_fc1: vb.linear("linear_fc1", dm, dm, true)?,
            linear_fc2: vb.linear("linear_fc2", cfg.out_hidden_size, dm, true)?,
            use_postshuffle_norm,
        })
    }

    /// x: (n, D) with n a multiple of 4 -> out: (n/4, O)
    pub(crate) fn forward(
        &self,
        c: &Ctx,
        x: &[f32],
        n_tok: usize,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        let dm = self.linear_fc1.in_features;
        // 1. y = norm(x) per patch (D), or norm(x.view(n/4, 4D)) (4D): the same memory either way, since
        //    four consecutive rows are one 2×2 block.
        let mut y = vec![0f32; n_tok * dm];
        self.norm.forward(&c.k, x, &mut y)?;
        // 2. y = fc2(gelu_erf(fc1(y.view(n/4, 4D))))
        let mut h = vec![0f32; n_tok * dm];
        self.linear_fc1.forward(c, &y, n_tok, &mut h)?;
        c.k.gelu_erf_assign(&mut h);
        self.linear_fc2.forward(c, &h, n_tok, out)
    }
}
