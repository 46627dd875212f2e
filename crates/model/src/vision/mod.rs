//! Qwen3VLVisionModel: patch embedding + interpolated position embedding, `depth` blocks with 2-D RoPE,
//! DeepStack mergers after selected blocks, and the final patch merger (spec 3).

pub mod block;
pub mod merger;
pub mod patch_embed;
pub mod pos_embed;
pub mod rotary;

use crate::config::VisionConfig;
use crate::input::VisionInput;
use crate::linear::{Ctx, Vb};
use crate::trace::{Hooks, Progress};
use crate::{KernelCtx, ModelError};

pub use block::VisionBlock;
pub use merger::PatchMerger;
pub use patch_embed::PatchEmbed;
pub use pos_embed::PosEmbed;
pub use rotary::VisionRotary;

pub struct VisionModel {
    pub cfg: VisionConfig,
    pub patch_embed: PatchEmbed,
    pub pos_embed: PosEmbed,
    pub rotary_pos_emb: VisionRotary,
    pub blocks: Vec<VisionBlock>,
    pub merger: PatchMerger,
    pub deepstack_merger_list: Vec<PatchMerger>,
}

/// Output of the vision tower for all images of a prompt, in prompt order.
#[derive(Clone, Debug, Default)]
pub struct VisionOutput {
    /// (n_tok, O): the merged visual tokens, n_tok = Σ t·h·w / 4
    pub embeds: Vec<f32>,
    /// one (n_tok, O) feature per deepstack index, injected after decoder layers 0, 1, ...
    pub deepstack: Vec<Vec<f32>>,
}

impl VisionOutput {
    /// Number of visual tokens (rows of `embeds`) for a model whose text hidden size is `hidden`.
    pub fn n_tokens(&self, hidden: usize) -> usize {
        self.embeds.len() / hidden.max(1)
    }
}

/// A vision encoding in progress ([`crate::Model::begin_images`]): the hidden states after the blocks run so
/// far, so that a scheduler can run the tower a few blocks at a time between decode steps.
pub struct VisionEncoding {
    n: usize,
    /// (n, D)
    x: Vec<f32>,
    segments: Vec<usize>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    scratch: block::VisionScratch,
    deepstack: Vec<Vec<f32>>,
    next_block: usize,
}

impl VisionEncoding {
    /// Blocks run so far.
    pub fn blocks_done(&self) -> usize {
        self.next_block
    }
}

impl VisionModel {
    pub(crate) fn load(vb: &Vb, cfg: &VisionConfig) -> Result<VisionModel, ModelError> {
        let blocks = (0..cfg.depth)
            .map(|i| VisionBlock::load(&vb.pp("blocks").pp(i), cfg))
            .collect::<Result<Vec<_>, _>>()?;
        let deepstack_merger_list = (0..cfg.deepstack_visual_indexes.len())
            .map(|j| PatchMerger::load(&vb.pp("deepstack_merger_list").pp(j), cfg, true))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VisionModel {
            cfg: cfg.clone(),
            patch_embed: PatchEmbed::load(&vb.pp("patch_embed"), cfg)?,
            pos_embed: PosEmbed::load(&vb.pp("pos_embed"), cfg)?,
            rotary_pos_emb: VisionRotary::new(cfg.head_dim()),
            blocks,
            merger: PatchMerger::load(&vb.pp("merger"), cfg, false)?,
            deepstack_merger_list,
        })
    }

    /// Checks the images against the config; returns the total patch count.
    fn check(&self, images: &[VisionInput]) -> Result<usize, ModelError> {
        let (m, pd) = (self.cfg.spatial_merge_size, self.cfg.patch_dim());
        let mut n = 0usize;
        for (i, im) in images.iter().enumerate() {
            let [t, h, w] = im.grid_thw;
            if t == 0 || h == 0 || w == 0 || h % m != 0 || w % m != 0 {
                return Err(ModelError::Input(format!(
                    "image {i}: grid_thw {:?} must be positive with h and w multiples of spatial_merge_size {m}",
                    im.grid_thw
                )));
            }
            let rows = t
                .checked_mul(h)
                .and_then(|x| x.checked_mul(w))
                .filter(|r| r.checked_mul(pd) == Some(im.pixel_values.len()))
                .ok_or_else(|| {
                    ModelError::Input(format!(
                        "image {i}: pixel_values has {} values, grid_thw {:?} needs t·h·w·{pd}",
                        im.pixel_values.len(),
                        im.grid_thw
                    ))
                })?;
            n += rows;
        }
        Ok(n)
    }

    /// images -> VisionOutput (all images' tokens concatenated in order).
    pub(crate) fn forward(
        &self,
        c: &Ctx,
        images: &[VisionInput],
        trace: &mut Hooks,
    ) -> Result<VisionOutput, ModelError> {
        let mut e = self.begin(c, images, trace)?;
        while !self.step(c, &mut e, trace)? {}
        self.finish(c, e, trace)
    }

    /// Steps 1–3 of [`VisionModel::forward`]: the encoding of `images` up to its first block.
    pub(crate) fn begin(
        &self,
        c: &Ctx,
        images: &[VisionInput],
        trace: &mut Hooks,
    ) -> Result<VisionEncoding, ModelError> {
        let cfg = &self.cfg;
        let n = self.check(images)?;
        let (d, merge) = (cfg.hidden_size, cfg.spatial_merge_size);
        let grids: Vec<[usize; 3]> = images.iter().map(|im| im.grid_thw).collect();
        // One attention segment per frame group of each image (cu_seqlens).
        let segments: Vec<usize> = grids
            .iter()
            .flat_map(|&[t, h, w]| std::iter::repeat_n(h * w, t))
            .collect();

        // 1. x = patch_embed(pixel_values)                           (n, D)
        let pixels: Vec<f32>;
        let pixels: &[f32] = if images.len() == 1 {
            &images[0].pixel_values
        } else {
            pixels = images
                .iter()
                .flat_map(|im| im.pixel_values.iter().copied())
                .collect();
            &pixels
        };
        let mut x = vec![0f32; n * d];
        self.patch_embed.forward(c, pixels, n, &mut x)?;
        trace.rec(|| "visual.patch_embed".into(), &[n, d], &x);

        // 2. x += interpolated position embedding                    (n, D)
        let mut pe = vec![0f32; n * d];
        self.pos_embed.forward(&grids, merge, &mut pe);
        trace.rec(|| "visual.pos_embed".into(), &[n, d], &pe);
        c.k.add_assign(&mut x, &pe).ctx("vision pos_embed")?;
        drop(pe);

        // 3. 2-D rotary tables                                       (n, hv/2)
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        self.rotary_pos_emb
            .cos_sin(&grids, merge, &mut cos, &mut sin);
        Ok(VisionEncoding {
            n,
            x,
            segments,
            cos,
            sin,
            scratch: block::VisionScratch::default(),
            deepstack: Vec::with_capacity(self.deepstack_merger_list.len()),
            next_block: 0,
        })
    }

    /// Step 4 of [`VisionModel::forward`] for one block: block `e.next_block`, then its DeepStack merger
    /// if it has one. Returns whether every block has run.
    pub(crate) fn step(
        &self,
        c: &Ctx,
        e: &mut VisionEncoding,
        trace: &mut Hooks,
    ) -> Result<bool, ModelError> {
        let cfg = &self.cfg;
        let i = e.next_block;
        let Some(blk) = self.blocks.get(i) else {
            return Ok(true);
        };
        let (n, d, o) = (e.n, cfg.hidden_size, cfg.out_hidden_size);
        let n_tok = n / cfg.merge_unit();
        // 4. blocks; after block deepstack_visual_indexes[j], deepstack_merger_list[j](x)  (n/4, O)
        let inp = block::VisionInputs {
            segments: &e.segments,
            cos: &e.cos,
            sin: &e.sin,
        };
        blk.forward(c, &mut e.x, n, &inp, &mut e.scratch)?;
        trace.rec(|| format!("visual.blocks.{i}"), &[n, d], &e.x);
        trace.report(Progress::Vision {
            patches: n,
            done: i + 1,
            total: self.blocks.len(),
        });
        if let Some(j) = cfg.deepstack_visual_indexes.iter().position(|&b| b == i) {
            let mut f = vec![0f32; n_tok * o];
            self.deepstack_merger_list[j].forward(c, &e.x, n_tok, &mut f)?;
            trace.rec(
                || format!("visual.deepstack_merger_list.{j}"),
                &[n_tok, o],
                &f,
            );
            e.deepstack.push(f);
        }
        e.next_block += 1;
        Ok(e.next_block >= self.blocks.len())
    }

    /// Step 5 of [`VisionModel::forward`], after every block has run.
    pub(crate) fn finish(
        &self,
        c: &Ctx,
        e: VisionEncoding,
        trace: &mut Hooks,
    ) -> Result<VisionOutput, ModelError> {
        let cfg = &self.cfg;
        if e.next_block < self.blocks.len() {
            return Err(ModelError::Input(format!(
                "vision encoding finished after {} of {} blocks",
                e.next_block,
                self.blocks.len()
            )));
        }
        let n_tok = e.n / cfg.merge_unit();
        let o = cfg.out_hidden_size;
        // 5. embeds = merger(x)                                      (n/4, O)
        let mut embeds = vec![0f32; n_tok * o];
        self.merger.forward(c, &e.x, n_tok, &mut embeds)?;
        trace.rec(|| "visual.merger".into(), &[n_tok, o], &embeds);
        Ok(VisionOutput {
            embeds,
            deepstack: e.deepstack,
        })
    }
}
