//! Storage of packed weights, zero-initialised and 64-byte aligned. On Linux a buffer of 2 MiB or more is
//! mapped on its own at a 2 MiB boundary with `MADV_HUGEPAGE` before the first touch, so transparent huge
//! pages can back it when THP runs in `madvise` mode (decode streams these weights: fewer TLB misses, and
//! streaming reads measured ~60 GB/s on THP-backed memory vs ~56 on 4 KiB pages), and freeing it returns
//! the memory to the system at once (a large freed heap block may otherwise stay in the process).
//! Elsewhere, or if the mapping fails, a plain aligned heap allocation.
//! A buffer may also view bytes someone else holds ([`StableBytes`], e.g. a packed-weight cache file mapped
//! read-only): it is then never written — a mutable borrow first copies it into memory of its own.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::KernelError;

/// Element types whose all-zero bit pattern is a valid value (the buffer starts zeroed).
pub(crate) trait Zeroable: Copy {}
impl Zeroable for u16 {}
impl Zeroable for f32 {}
impl Zeroable for u32 {}

/// Alignment of every buffer (a cache line; full 512-bit vectors never straddle two lines).
const ALIGN: usize = 64;
/// Size of a transparent huge page (x86-64), and the size from which a buffer gets its own mapping.
#[cfg(target_os = "linux")]
const HUGE: usize = 2 << 20;

/// Bytes owned elsewhere that a packed weight may use in place (a file mapping, a loaded blob).
///
/// # Safety
/// `bytes()` must return the same slice (same address and length) every time for as long as the value
/// lives, and nothing may write those bytes meanwhile (a read-only mapping of a file nobody modifies in
/// place: the same contract as every mmap-based loader).
pub unsafe trait StableBytes: Send + Sync {
    fn bytes(&self) -> &[u8];
}

enum Alloc {
    /// len == 0: a dangling aligned pointer.
    None,
    /// A view of bytes held by the owner (never written through; see `DerefMut`).
    Shared(Arc<dyn StableBytes>),
    Heap(Layout),
    /// `munmap(ptr, bytes)` on drop (bytes: the used length rounded up to whole 4 KiB pages).
    #[cfg(target_os = "linux")]
    Map(usize),
}

/// A fixed-length zero-initialised slice of `T` (see the module docs).
pub(crate) struct AlignedBuf<T: Zeroable> {
    ptr: NonNull<T>,
    len: usize,
    alloc: Alloc,
}

// Safety: the buffer owns its memory exclusively, like a Vec<T>.
unsafe impl<T: Zeroable + Send> Send for AlignedBuf<T> {}
unsafe impl<T: Zeroable + Sync> Sync for AlignedBuf<T> {}

impl<T: Zeroable> AlignedBuf<T> {
    /// `len` zeroed elements. Errors (naming `op`) if the size overflows or memory is exhausted.
    pub fn zeroed(op: &'static str, len: usize) -> Result<AlignedBuf<T>, KernelError> {
        let oom = |msg: String| KernelError::Invalid { op, msg };
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .filter(|&b| b <= isize::MAX as usize - ALIGN)
            .ok_or_else(|| oom(format!("{len} elements overflow the address space")))?;
        if bytes == 0 {
            return Ok(AlignedBuf {
                // Safety: ALIGN is non-zero; a dangling, aligned pointer for an empty slice.
                ptr: NonNull::new(ALIGN as *mut T).expect("non-zero"),
                len,
                alloc: Alloc::None,
            });
        }
        #[cfg(target_os = "linux")]
        if bytes >= HUGE {
            if let Some((p, used)) = map_huge(bytes) {
                return Ok(AlignedBuf {
                    ptr: p.cast(),
                    len,
                    alloc: Alloc::Map(used),
                });
            }
        }
        let layout = Layout::from_size_align(bytes, ALIGN)
            .map_err(|e| oom(format!("{bytes} bytes: {e}")))?;
        // Safety: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let p = NonNull::new(p as *mut T)
            .ok_or_else(|| oom(format!("out of memory allocating {bytes} bytes")))?;
        Ok(AlignedBuf {
            ptr: p,
            len,
            alloc: Alloc::Heap(layout),
        })
    }

    /// A view of `len` elements of `owner`'s bytes from byte `offset`, which must be 64-byte aligned and
    /// inside them. Errors (naming `op`) say which check failed.
    pub fn shared(
        op: &'static str,
        owner: Arc<dyn StableBytes>,
        offset: usize,
        len: usize,
    ) -> Result<AlignedBuf<T>, KernelError> {
        let bad = |msg: String| KernelError::Invalid { op, msg };
        let bytes = owner.bytes();
        let size = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| bad(format!("{len} elements overflow the address space")))?;
        let end = offset
            .checked_add(size)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| {
                bad(format!(
                    "bytes {offset}..+{size} run past the end of the {}-byte source",
                    bytes.len()
                ))
            })?;
        if len == 0 {
            return AlignedBuf::zeroed(op, 0);
        }
        let p = bytes[offset..end].as_ptr();
        if !(p as usize).is_multiple_of(ALIGN) {
            return Err(bad(format!(
                "data at byte {offset} is not {ALIGN}-byte aligned in memory"
            )));
        }
        Ok(AlignedBuf {
            // Safety: non-null (inside a live slice), aligned for T (64 bytes), `len` elements of plain
            // data (any bit pattern is a valid T: Zeroable types are integers and floats) that the owner
            // keeps alive and unchanged while `alloc` holds it (the StableBytes contract).
            ptr: NonNull::new(p as *mut T).ok_or_else(|| bad("null source".into()))?,
            len,
            alloc: Alloc::Shared(owner),
        })
    }

    /// Whether this buffer views bytes owned elsewhere ([`AlignedBuf::shared`]).
    pub fn is_shared(&self) -> bool {
        matches!(self.alloc, Alloc::Shared(_))
    }

    /// Whether transparent huge pages may back this buffer (its own 2 MiB-aligned mapping, advised).
    pub fn huge_pages_advised(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            matches!(self.alloc, Alloc::Map(_))
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }
}

/// An anonymous mapping of `bytes` (rounded up to 4 KiB pages) starting at a 2 MiB boundary, advised
/// `MADV_HUGEPAGE` before any page is touched (the pages read as zero). None if mapping fails.
#[cfg(target_os = "linux")]
fn map_huge(bytes: usize) -> Option<(NonNull<u8>, usize)> {
    let used = bytes.checked_next_multiple_of(4096)?;
    let map_len = used.checked_add(HUGE)?;
    // Safety: a fresh private anonymous mapping; no existing memory is affected.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return None;
    }
    let b = base as usize;
    let start = b.next_multiple_of(HUGE);
    let (head, tail) = (start - b, map_len - (start - b) - used);
    // Safety: both ranges lie inside the mapping just created and are not used by anything. The tail is
    // trimmed to the used length so a partial last 2 MiB stays on small pages (no RSS past `used`).
    unsafe {
        if head > 0 {
            libc::munmap(base, head);
        }
        if tail > 0 {
            libc::munmap((start + used) as *mut libc::c_void, tail);
        }
        // Best effort: without THP (or in `never` mode) this fails or does nothing; the mapping still works.
        libc::madvise(start as *mut libc::c_void, used, libc::MADV_HUGEPAGE);
    }
    Some((NonNull::new(start as *mut u8)?, used))
}

impl<T: Zeroable> Drop for AlignedBuf<T> {
    fn drop(&mut self) {
        match self.alloc {
            // The owner is dropped with the Arc.
            Alloc::None | Alloc::Shared(_) => {}
            // Safety: allocated by `alloc_zeroed` with this layout.
            Alloc::Heap(layout) => unsafe {
                std::alloc::dealloc(self.ptr.as_ptr() as *mut u8, layout)
            },
            // Safety: the mapping created by `map_huge`, of this length.
            #[cfg(target_os = "linux")]
            Alloc::Map(used) => unsafe {
                libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, used);
            },
        }
    }
}

impl<T: Zeroable> std::ops::Deref for AlignedBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // Safety: `len` initialised elements (zeroed at allocation), owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Zeroable> std::ops::DerefMut for AlignedBuf<T> {
    /// A shared view is first copied into memory of its own (its source is read-only), like `Cow::to_mut`.
    fn deref_mut(&mut self) -> &mut [T] {
        if self.is_shared() {
            let mut own = AlignedBuf::zeroed("copy of a shared buffer", self.len)
                .expect("memory for a copy of a packed weight");
            own.copy_from_slice(self);
            *self = own;
        }
        // Safety: as `deref`, borrowed mutably through &mut self; the memory is owned (not shared).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Zeroable> Clone for AlignedBuf<T> {
    /// A copy of owned memory; a shared view clones the view (no copy of the bytes).
    fn clone(&self) -> Self {
        if let Alloc::Shared(owner) = &self.alloc {
            return AlignedBuf {
                ptr: self.ptr,
                len: self.len,
                alloc: Alloc::Shared(owner.clone()),
            };
        }
        let mut c =
            AlignedBuf::zeroed("clone", self.len).expect("memory for a copy of a packed weight");
        c.copy_from_slice(self);
        c
    }
}

impl<T: Zeroable> std::fmt::Debug for AlignedBuf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AlignedBuf({} elements, huge pages advised: {}, shared: {})",
            self.len,
            self.huge_pages_advised(),
            self.is_shared()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small and large buffers: 64-byte aligned, zeroed, writable to the end; clones are equal copies.
    #[test]
    fn aligned_zeroed_writable() {
        for len in [
            0usize,
            1,
            3,
            31,
            1000,
            (2 << 20) / 2 - 1,
            (2 << 20) / 2,
            (3 << 20) + 5,
        ] {
            let mut b = AlignedBuf::<u16>::zeroed("test", len).unwrap();
            assert_eq!(b.len(), len);
            assert_eq!(b.as_ptr() as usize % ALIGN, 0, "len {len}");
            assert!(b.iter().all(|&v| v == 0), "len {len}");
            if let Some(last) = b.last_mut() {
                *last = 7;
            }
            let c = b.clone();
            assert_eq!(c[..], b[..]);
            #[cfg(target_os = "linux")]
            assert_eq!(b.huge_pages_advised(), len * 2 >= HUGE, "len {len}");
        }
        // a mapped buffer starts at a huge-page boundary
        #[cfg(target_os = "linux")]
        {
            let f = AlignedBuf::<f32>::zeroed("test", 1 << 20).unwrap();
            assert_eq!(f.as_ptr() as usize % HUGE, 0);
        }
    }

    /// 64-byte aligned bytes held in a Vec (the test's stand-in for a file mapping).
    struct Held(Vec<u8>, usize, usize);
    // Safety: the Vec is never modified or moved out while the value lives.
    unsafe impl StableBytes for Held {
        fn bytes(&self) -> &[u8] {
            &self.0[self.1..self.1 + self.2]
        }
    }
    /// n bytes starting at a 64-byte boundary.
    fn held(n: usize) -> Arc<dyn StableBytes> {
        let v: Vec<u8> = (0..n + 64).map(|i| (i * 7 % 251) as u8).collect();
        let skip = v.as_ptr().align_offset(64);
        Arc::new(Held(v, skip, n))
    }

    /// A shared view reads the owner's bytes in place; clones share them; a mutable borrow copies first
    /// and leaves the owner unchanged; bad offsets, lengths and alignment are errors.
    #[test]
    fn shared_views_read_in_place_and_copy_on_write() {
        let owner = held(4096);
        let src = owner.bytes().as_ptr();
        let b = AlignedBuf::<u16>::shared("test", owner.clone(), 128, 1000).unwrap();
        assert!(b.is_shared());
        assert_eq!(b.as_ptr() as usize, src as usize + 128);
        assert_eq!(
            b[3],
            u16::from_le_bytes([owner.bytes()[134], owner.bytes()[135]])
        );
        let c = b.clone();
        assert!(c.is_shared());
        assert_eq!(c.as_ptr(), b.as_ptr());
        let mut d = b.clone();
        d[0] = 0xbeef;
        assert!(!d.is_shared());
        assert_eq!(d[0], 0xbeef);
        assert_eq!(d[1..], b[1..]);
        assert_ne!(b[0], 0xbeef);
        assert_eq!(owner.bytes()[128..130], b[0].to_le_bytes());
        // past the end, misaligned, overflowing
        let e = AlignedBuf::<f32>::shared("load", owner.clone(), 64, 1009).unwrap_err();
        assert!(
            e.to_string().contains("run past the end of the 4096-byte"),
            "{e}"
        );
        let e = AlignedBuf::<f32>::shared("load", owner.clone(), 4, 8).unwrap_err();
        assert!(e.to_string().contains("not 64-byte aligned"), "{e}");
        assert!(AlignedBuf::<f32>::shared("load", owner.clone(), 0, usize::MAX / 2).is_err());
        assert_eq!(
            AlignedBuf::<f32>::shared("load", owner, 4096, 0)
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn oversize_is_an_error() {
        let e = AlignedBuf::<f32>::zeroed("pack_weight", usize::MAX / 2).unwrap_err();
        assert!(e.to_string().contains("pack_weight"), "{e}");
    }
}
