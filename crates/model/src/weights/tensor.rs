//! A tensor of a mapped file: its bytes, widened to f32 or viewed as bf16 bits.

use std::sync::Arc;

use memmap2::Mmap;
use qwen3vl_kernels::matmul::StableBytes;

use super::Dtype;
use crate::ModelError;

/// A tensor's location: which mapped file and which bytes.
#[derive(Clone)]
pub struct TensorRef {
    pub key: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub(super) mmap: Arc<Mmap>,
    pub(super) start: usize,
    pub(super) end: usize,
}

/// A checkpoint file's mapping as bytes a weight may use in place.
struct ShardBytes(Arc<Mmap>);
// Safety: a read-only mapping at a fixed address for as long as the Arc lives. The contract of every
// mmap-based loader: the checkpoint is not rewritten in place while a model uses it (replacing it by
// rename, as `qwen3vl quantize` and downloads do, leaves this mapping on the old file).
unsafe impl StableBytes for ShardBytes {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl TensorRef {
    pub fn bytes(&self) -> &[u8] {
        &self.mmap[self.start..self.end]
    }

    /// The whole mapped file this tensor is in, and the tensor's offset in it: for a weight that uses the
    /// bytes in place instead of copying them.
    pub fn in_place(&self) -> (Arc<dyn StableBytes>, usize) {
        (Arc::new(ShardBytes(self.mmap.clone())), self.start)
    }

    /// Whether this tensor's bytes start where `prev`'s end, in the same mapped file.
    pub fn follows(&self, prev: &TensorRef) -> bool {
        Arc::ptr_eq(&self.mmap, &prev.mmap) && prev.end == self.start
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Drops this tensor's pages from the process's resident set once its contents have been copied
    /// (packed or widened): the mapping is read-only and file-backed, so a later read (an embedding row)
    /// faults the page back in from the file. Without this the whole checkpoint stays resident beside the
    /// packed copy (peak RSS ≈ 2× the checkpoint). Best effort: errors are ignored.
    pub fn release(&self) {
        #[cfg(unix)]
        {
            // Safety: the mapping is a read-only MAP_SHARED file mapping (memmap2 `Mmap::map`); MADV_DONTNEED
            // on it only unmaps the pages, and any later access re-reads identical bytes from the file, so
            // live `&[u8]` views of it stay valid. memmap2 widens the range to whole pages.
            let _ = unsafe {
                self.mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    self.start,
                    self.end - self.start,
                )
            };
        }
    }

    /// The values widened to f32 (any float dtype).
    pub fn to_f32(&self) -> Result<Vec<f32>, ModelError> {
        let b = self.bytes();
        Ok(match self.dtype {
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::BF16 => b
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
            Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            d => {
                return Err(ModelError::Dtype {
                    key: self.key.clone(),
                    msg: format!("{d:?} is not a float dtype (expected BF16, F16 or F32)"),
                })
            }
        })
    }

    /// The raw bf16 bits (only for BF16 tensors); copied if the mapping is not 2-byte aligned.
    pub fn bf16_bits(&self) -> Option<std::borrow::Cow<'_, [u16]>> {
        if self.dtype != Dtype::BF16 {
            return None;
        }
        let b = self.bytes();
        if cfg!(target_endian = "little") && (b.as_ptr() as usize).is_multiple_of(2) {
            // Safety: aligned, length is even (validated shape × 2), any bit pattern is a valid u16.
            let s = unsafe { std::slice::from_raw_parts(b.as_ptr() as *const u16, b.len() / 2) };
            Some(std::borrow::Cow::Borrowed(s))
        } else {
            Some(std::borrow::Cow::Owned(
                b.chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ))
        }
    }

    /// Row `r` of a 2-D float tensor widened into `out` (embedding lookups straight from the mapping).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let cols = out.len();
        let sz = self.dtype.size();
        let b = &self.bytes()[r * cols * sz..(r + 1) * cols * sz];
        match self.dtype {
            Dtype::F32 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Dtype::BF16 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
                }
            }
            Dtype::F16 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
            // Checked at load (`Weights::float`).
            _ => out.fill(f32::NAN),
        }
    }
}
