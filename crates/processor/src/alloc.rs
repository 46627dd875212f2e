//! Large output buffers. A fresh 67 MB `pixel_values` costs ~16k page faults at 4 KiB pages, which measured
//! ~30 ms here — more than decode, resize and patchify together. On Linux, buffers of 4 MiB and more are
//! advised as transparent-huge-page candidates (`madvise(MADV_HUGEPAGE)` on their 2 MiB-aligned interior),
//! cutting that to a few dozen faults. Advice only: if the kernel refuses, nothing changes but speed.

/// An empty Vec with room for `cap` elements, huge-page advised when large.
pub(crate) fn big_vec<T>(cap: usize) -> Vec<T> {
    let v: Vec<T> = Vec::with_capacity(cap);
    #[cfg(target_os = "linux")]
    advise_huge(v.as_ptr() as usize, cap * std::mem::size_of::<T>());
    v
}

#[cfg(target_os = "linux")]
fn advise_huge(addr: usize, bytes: usize) {
    const HUGE: usize = 2 << 20;
    if bytes < 2 * HUGE {
        return;
    }
    let start = addr.next_multiple_of(HUGE);
    let end = (addr + bytes) / HUGE * HUGE;
    if end > start {
        // Safety: [start, end) lies inside the allocation just made; MADV_HUGEPAGE only changes how the
        // kernel backs those pages, never their contents.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}
