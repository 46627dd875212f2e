//! Packed weights held elsewhere: the shape of a packed weight as a cache file records it
//! ([`PackedLayout`]), and a [`PackedWeight`] that views bytes of a [`StableBytes`] owner in place (a
//! packed-weight cache file mapped read-only by the loader: no copy, no page zeroing). The bytes are the
//! level's panels exactly as [`PackedWeight::as_bytes`] gives them.

use std::sync::Arc;

use super::buf::{AlignedBuf, StableBytes};
use super::{mul, PackedData, PackedWeight};
use crate::{KernelError, Kernels};

/// What a packed weight holds, apart from the level (its ISA and group come from the [`Kernels`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedLayout {
    /// outputs (I for a SwiGLU pair)
    pub n: usize,
    pub k: usize,
    /// bf16 panels (else f32)
    pub bf16: bool,
    /// a gate/up pair for the SwiGLU epilogue
    pub swiglu: bool,
}

/// Elements of the panels of `l` with groups of `g` rows (bf16: groups × ⌈k/2⌉ pairs × G × 2; f32:
/// groups × k × G).
pub(super) fn packed_len(
    op: &'static str,
    g: usize,
    l: PackedLayout,
) -> Result<usize, KernelError> {
    mul(op, mul(op, l.n, 2)?, l.k)?;
    let groups = l.n.div_ceil(if l.swiglu { g / 2 } else { g });
    if l.bf16 {
        mul(op, mul(op, groups, l.k.div_ceil(2))?, g * 2)
    } else {
        mul(op, mul(op, groups, l.k)?, g)
    }
}

impl PackedWeight {
    /// n, k, element type and kind of this weight.
    pub fn layout(&self) -> PackedLayout {
        PackedLayout {
            n: self.n,
            k: self.k,
            bf16: self.is_bf16(),
            swiglu: self.swiglu,
        }
    }

    /// G: output rows per group of the panels.
    pub fn group(&self) -> usize {
        self.group
    }

    /// Whether the panels are viewed in place in bytes held elsewhere ([`Kernels::packed_from_shared`]).
    pub fn is_shared(&self) -> bool {
        match &self.data {
            PackedData::Bf16(v) => v.is_shared(),
            PackedData::F32(v) => v.is_shared(),
        }
    }
}

impl Kernels {
    /// Bytes of the panels a weight of layout `l` packs into at this level.
    pub fn packed_bytes(&self, l: PackedLayout) -> Result<usize, KernelError> {
        let elems = packed_len("packed_bytes", self.mm().group, l)?;
        mul("packed_bytes", elems, if l.bf16 { 2 } else { 4 })
    }

    /// A packed weight of layout `l` whose panels (packed at this level, `len` bytes) are the bytes of
    /// `owner` from `offset`, used in place. Checks that `len` is what `l` packs into here, that the range
    /// lies inside the owner's bytes and that it is 64-byte aligned; the values themselves are not checked
    /// (any bits are valid bf16/f32), so the caller must know they were written by this level's packer.
    pub fn packed_from_shared(
        &self,
        l: PackedLayout,
        owner: Arc<dyn StableBytes>,
        offset: usize,
        len: usize,
    ) -> Result<PackedWeight, KernelError> {
        const OP: &str = "packed_from_shared";
        let want = self.packed_bytes(l)?;
        if len != want {
            return Err(KernelError::Invalid {
                op: OP,
                msg: format!(
                    "{len} bytes for a {}x{} {} weight{}, which packs into {want} at {}",
                    l.n,
                    l.k,
                    if l.bf16 { "bf16" } else { "f32" },
                    if l.swiglu { " pair" } else { "" },
                    self.isa()
                ),
            });
        }
        let data = if l.bf16 {
            PackedData::Bf16(AlignedBuf::shared(OP, owner, offset, len / 2)?)
        } else {
            PackedData::F32(AlignedBuf::shared(OP, owner, offset, len / 4)?)
        };
        Ok(PackedWeight {
            n: l.n,
            k: l.k,
            isa: self.isa(),
            group: self.mm().group,
            swiglu: l.swiglu,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul::{MatmulPath, Weight};

    /// Bytes copied to a 64-byte aligned offset of a held buffer.
    struct Held(Vec<u8>, usize, usize);
    // Safety: the Vec is never modified or moved out while the value lives.
    unsafe impl StableBytes for Held {
        fn bytes(&self) -> &[u8] {
            &self.0[self.1..self.1 + self.2]
        }
    }
    fn held_copy(at: usize, src: &[u8]) -> Arc<dyn StableBytes> {
        let n = at + src.len();
        let mut v = vec![0u8; n + 64];
        let skip = v.as_ptr().align_offset(64);
        v[skip + at..skip + n].copy_from_slice(src);
        Arc::new(Held(v, skip, n))
    }

    /// At every level, for bf16, f32 and SwiGLU weights of awkward sizes: the panels viewed in place give
    /// the bits of the matmul on the packed original; lengths, ranges and alignment are checked.
    #[test]
    fn shared_panels_match_the_packed_weight() {
        let (n, k, m) = (37usize, 13usize, 3usize);
        let w32: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
            .collect();
        let w16: Vec<u16> = w32.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 8.0)
            .collect();
        for kern in Kernels::all_available() {
            let gate_up: Vec<u16> = w16.iter().chain(&w16).copied().collect();
            let cases = [
                kern.pack_weight(Weight::Bf16(&w16), n, k).unwrap(),
                kern.pack_weight(Weight::F32(&w32), n, k).unwrap(),
                kern.pack_swiglu(
                    Weight::Bf16(&gate_up[..n * k]),
                    Weight::Bf16(&gate_up[n * k..]),
                    n,
                    k,
                )
                .unwrap(),
            ];
            for p in cases {
                let l = p.layout();
                assert_eq!(kern.packed_bytes(l).unwrap(), p.bytes(), "{}", kern.isa());
                let owner = held_copy(192, p.as_bytes());
                let s = kern
                    .packed_from_shared(l, owner.clone(), 192, p.bytes())
                    .unwrap();
                assert!(s.is_shared() && !p.is_shared());
                assert_eq!(s.as_bytes().as_ptr(), owner.bytes()[192..].as_ptr());
                assert_eq!((s.layout(), s.group(), s.isa()), (l, p.group(), p.isa()));
                for path in [MatmulPath::Exact, MatmulPath::Fast] {
                    let (mut y0, mut y1) = (vec![0f32; m * n], vec![0f32; m * n]);
                    kern.matmul(&x, m, &p, None, &mut y0, path).unwrap();
                    kern.matmul(&x, m, &s, None, &mut y1, path).unwrap();
                    let bits = |y: &[f32]| y.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&y0), bits(&y1), "{} {l:?} {path:?}", kern.isa());
                    assert!(y0.iter().any(|&v| v != 0.0));
                }
                let e = kern
                    .packed_from_shared(l, owner.clone(), 192, p.bytes() - 2)
                    .unwrap_err();
                assert!(e.to_string().contains("which packs into"), "{e}");
                let e = kern
                    .packed_from_shared(l, owner.clone(), 256, p.bytes())
                    .unwrap_err();
                assert!(e.to_string().contains("run past the end"), "{e}");
                let owner = held_copy(200, p.as_bytes());
                let e = kern
                    .packed_from_shared(l, owner, 200, p.bytes())
                    .unwrap_err();
                assert!(e.to_string().contains("aligned"), "{e}");
            }
        }
    }
}
