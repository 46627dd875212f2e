//! What the model takes: pixels with their patch grid ([`VisionInput`]), M-RoPE positions ([`Positions`]),
//! and the sequences of one forward pass ([`Seq`]). The model does not know the processor: the engine turns
//! the processor's output into these.

use crate::kv_cache::KvCache;
use crate::vision::VisionOutput;

/// One image (or a group of video frames) for the vision tower.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionInput {
    /// (t·h·w, C·temporal·patch²) patch rows in the processor's order (merge blocks contiguous).
    pub pixel_values: Vec<f32>,
    /// (t, h, w) in patches.
    pub grid_thw: [usize; 3],
}

/// M-RoPE positions of a run of tokens: three rows (T, H, W) of equal length, absolute.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Positions {
    /// (3, l): rows T, H, W
    pub rows: [Vec<i64>; 3],
}

impl Positions {
    /// Text positions `start, start+1, ...` (`n` tokens) on all three axes.
    pub fn text(start: i64, n: usize) -> Positions {
        let r: Vec<i64> = (start..start + n as i64).collect();
        Positions {
            rows: [r.clone(), r.clone(), r],
        }
    }

    pub fn len(&self) -> usize {
        self.rows[0].len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `other`'s positions, each shifted by `offset`.
    pub fn extend_shifted(&mut self, other: PositionsRef, offset: i64) {
        for (r, o) in self.rows.iter_mut().zip(other.rows) {
            r.extend(o.iter().map(|&p| p + offset));
        }
    }

    /// The whole run, borrowed.
    pub fn as_ref(&self) -> PositionsRef<'_> {
        self.slice(0, self.len())
    }

    /// Tokens `a..b` (clamped to the run).
    pub fn slice(&self, a: usize, b: usize) -> PositionsRef<'_> {
        let b = b.min(self.len());
        let a = a.min(b);
        PositionsRef {
            rows: [
                &self.rows[0][a..b],
                &self.rows[1][a..b],
                &self.rows[2][a..b],
            ],
        }
    }
}

impl From<[Vec<i64>; 3]> for Positions {
    fn from(rows: [Vec<i64>; 3]) -> Positions {
        Positions { rows }
    }
}

/// Borrowed [`Positions`] (what a forward pass reads).
#[derive(Clone, Copy, Debug)]
pub struct PositionsRef<'a> {
    pub rows: [&'a [i64]; 3],
}

impl<'a> PositionsRef<'a> {
    /// One decoded token at `p` on all three axes (no allocation).
    pub fn single(p: &'a i64) -> PositionsRef<'a> {
        let r = std::slice::from_ref(p);
        PositionsRef { rows: [r, r, r] }
    }

    pub fn len(&self) -> usize {
        self.rows[0].len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which rows of logits a sequence of a forward pass wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None: a prefill chunk that is not the last one
    None,
    /// (V): the last token's
    Last,
    /// (l, V): every token's
    All,
}

/// The visual features of a sequence's image tokens: the image tokens of this call take rows
/// `first, first+1, ...` of `features` (a prompt prefilled in chunks starts later chunks past row 0).
#[derive(Clone, Copy, Debug)]
pub struct VisionRows<'a> {
    pub features: &'a VisionOutput,
    pub first: usize,
}

/// One sequence of a forward pass: `ids` appended to `cache` at `positions`.
pub struct Seq<'a> {
    /// (l) token ids
    pub ids: &'a [u32],
    /// (3, l)
    pub positions: PositionsRef<'a>,
    /// Features for the image tokens among `ids` (prefill only).
    pub vision: Option<VisionRows<'a>>,
    pub cache: &'a mut KvCache,
    pub logits: Logits,
}

impl<'a> Seq<'a> {
    /// One decode step: token `id` at position `pos` (all axes) appended to `cache`; last-row logits.
    pub fn decode(id: &'a u32, pos: &'a i64, cache: &'a mut KvCache) -> Seq<'a> {
        Seq {
            ids: std::slice::from_ref(id),
            positions: PositionsRef::single(pos),
            vision: None,
            cache,
            logits: Logits::Last,
        }
    }
}
