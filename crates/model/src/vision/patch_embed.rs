//! Qwen3VLVisionPatchEmbed: a Conv3d whose kernel equals its stride, i.e. one matmul (spec 3.1).

use crate::config::VisionConfig;
use crate::linear::{Ctx, Linear, Vb};
use crate::ModelError;

pub struct PatchEmbed {
    /// `proj`: Conv3d weight (D, C, T, P, P) viewed as a Linear (D, C·T·P·P); the 1536 axis is (c, t, ky, kx)
    /// in both the weight and the pixel row.
    pub proj: Linear,
}

impl PatchEmbed {
    pub(crate) fn load(vb: &Vb, cfg: &VisionConfig) -> Result<PatchEmbed, ModelError> {
        let m = vb.pp("proj");
        let d = cfg.hidden_size;
        let t = m.tensor(
            "weight",
            &[
                d,
                cfg.in_channels,
                cfg.temporal_patch_size,
                cfg.patch_size,
                cfg.patch_size,
            ],
        )?;
        let weight = vb.pack(&[&t], d, cfg.patch_dim())?;
        let bias = Some(m.vec("bias", d)?);
        Ok(PatchEmbed {
            proj: Linear {
                weight,
                bias,
                out_features: d,
                in_features: cfg.patch_dim(),
            },
        })
    }

    /// pixels: (n, C·T·P·P) -> out: (n, D)
    pub(crate) fn forward(
        &self,
        c: &Ctx,
        pixels: &[f32],
        n: usize,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        // x = P · W.reshape(D, 1536)ᵀ + b
        self.proj.forward(c, pixels, n, out)
    }
}
