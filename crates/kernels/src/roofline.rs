//! This machine's limits, measured: read bandwidth from memory (one thread and all threads of a
//! [`Kernels`]' pool), peak f32 FMA throughput, and peak bf16 dot-product (`vdpbf16ps`) throughput.
//! Benchmarks report their figures as a fraction of these.
//!
//! Each figure is the best of several repetitions (the machine may be shared; the best is the closest to
//! what the hardware can do). The read test streams a buffer much larger than the last-level cache with
//! vector loads into independent accumulators; the compute tests run independent chains of FMAs (or
//! `vdpbf16ps`) on registers, enough of them to cover the instruction's latency.

use crate::isa::Isa;
use crate::matmul::buf::AlignedBuf;
use crate::Kernels;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Measured limits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Roofline {
    /// Threads used for the all-thread figures.
    pub threads: usize,
    /// Read bandwidth, one thread, GB/s (10⁹ bytes).
    pub read_gbps_1t: f64,
    /// Read bandwidth, all threads, GB/s.
    pub read_gbps: f64,
    /// f32 FMA peak, all threads, GFLOP/s (an FMA is 2 flops).
    pub fma_gflops: f64,
    /// `vdpbf16ps` peak, all threads, GFLOP/s (2 flops per bf16 product); None without AVX512_BF16.
    pub bf16_gflops: Option<f64>,
    /// AMX `tdpbf16ps` peak, all threads, GFLOP/s; None unless [`Kernels::amx`].
    pub amx_gflops: Option<f64>,
}

/// `len` deterministic pseudo-random values in [-0.5, 0.5) from `seed` (a 64-bit LCG): the operands of the
/// benchmarks that measure kernels against these limits (`bench matmul`, the criterion benches, the
/// examples), the same values wherever they run.
pub fn sample(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * 0.5
        })
        .collect()
}

/// Measures every limit with the kernels' ISA and thread count (about 2–3 seconds).
pub fn measure(k: &Kernels) -> Roofline {
    Roofline {
        threads: k.threads(),
        read_gbps_1t: read_bandwidth(&k.with_threads(1), 256 << 20, 8),
        read_gbps: read_bandwidth(k, 256 << 20, 16),
        fma_gflops: fma_peak(k),
        bf16_gflops: bf16_dot_peak(k),
        amx_gflops: amx_peak(k),
    }
}

/// Best read bandwidth (GB/s) of `reps` passes over each of two buffers of `bytes`, split over the pool's
/// threads in contiguous ranges.
///
/// The buffers are allocated like packed weights (64-byte aligned, transparent huge pages advised), so
/// decode and this probe read the same kind of memory.
///
/// The best pass is the figure: on a shared VM a pass can be slowed by a neighbour for a few milliseconds,
/// never sped up, and two separately allocated buffers sample two placements in physical memory (one
/// buffer alone read 27–54 GB/s from run to run on the development VM, 56–63 GB/s with this method).
pub fn read_bandwidth(k: &Kernels, bytes: usize, reps: usize) -> f64 {
    let n = (bytes / 4).max(1 << 12);
    let mut best = 0f64;
    for _buffer in 0..2 {
        // Stored like the packed weights decode streams (see `matmul::buf`: huge-page-advised on Linux).
        let Ok(mut buf) = AlignedBuf::<u32>::zeroed("read_bandwidth", n) else {
            break;
        };
        buf.iter_mut().enumerate().for_each(|(i, v)| *v = i as u32);
        best = best.max(read_bandwidth_of(k, &buf[..], reps));
    }
    best
}

/// Element types a probe may read as raw bytes (no padding, every bit pattern valid).
pub trait Plain: Copy + sealed::Sealed {}
impl Plain for u8 {}
impl Plain for u16 {}
impl Plain for u32 {}
impl Plain for f32 {}
mod sealed {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for u16 {}
    impl Sealed for u32 {}
    impl Sealed for f32 {}
}

/// The bytes of plain data.
pub(crate) fn as_bytes<T: Plain>(data: &[T]) -> &[u8] {
    // Safety: `Plain` types have no padding bytes; the length is the slice's size in bytes.
    unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(data)) }
}

/// Seconds of one read of every byte of `data`, split over the pool's threads in contiguous ranges (no
/// warm-up: the caller interleaves it with the work it compares against).
pub fn read_seconds<T: Plain>(k: &Kernels, data: &[T]) -> f64 {
    let (threads, isa, data) = (k.threads(), k.isa(), as_bytes(data));
    let n = data.len();
    let sink = AtomicU64::new(0);
    let t0 = Instant::now();
    k.parallel_for(threads, &|t| {
        let (a, b) = (n * t / threads, n * (t + 1) / threads);
        sink.fetch_xor(xor_fold(isa, &data[a..b]), Ordering::Relaxed);
    });
    let dt = t0.elapsed().as_secs_f64();
    std::hint::black_box(sink.load(Ordering::Relaxed));
    dt
}

/// Best read bandwidth (GB/s) of `reps` passes over `data` (after one uncounted pass that warms the TLB
/// and the pool). Pass memory a workload streams (e.g. a packed weight larger than the caches) to measure
/// the limit of that very memory, without allocating.
pub fn read_bandwidth_of<T: Plain>(k: &Kernels, data: &[T], reps: usize) -> f64 {
    let bytes = std::mem::size_of_val(data) as f64;
    read_seconds(k, data);
    (0..reps.max(1))
        .map(|_| bytes / read_seconds(k, data) / 1e9)
        .fold(0.0, f64::max)
}

/// f32 FMA peak (GFLOP/s) on all threads of `k`, at its ISA's vector width.
pub fn fma_peak(k: &Kernels) -> f64 {
    let isa = k.isa();
    compute_peak(k, &|iters| fma_loop(isa, iters))
}

/// `vdpbf16ps` peak (GFLOP/s) on all threads; None unless the CPU has AVX512_BF16 and `k` is AVX-512.
pub fn bf16_dot_peak(k: &Kernels) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if k.isa() == Isa::Avx512 && k.features().avx512_bf16 {
        // Safety: checked the features just above.
        return Some(compute_peak(k, &|iters| unsafe { x86::dp_loop(iters) }));
    }
    let _ = k;
    None
}

/// AMX `tdpbf16ps` peak (GFLOP/s) on all threads, tiles in registers (no loads); None unless `k.amx()`.
pub fn amx_peak(k: &Kernels) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if k.amx() {
        // Safety: `amx` implies the features and the process's tile permission.
        return Some(compute_peak(k, &|iters| unsafe { x86::amx_loop(iters) }));
    }
    let _ = k;
    None
}

/// Whether `vdpbf16ps` outruns f32 FMA on this CPU (decided once per process): one thread times short
/// bursts of each (≈ 0.25 ms, alternating, best of 4), and the bf16 dot product is used when its
/// throughput is at least 0.9× the FMA's (with equal peaks it still wins: the exact kernels spend integer
/// ops widening the bf16 weights). The two differ by 2× either way on the CPUs seen so far (Zen 4: 2×
/// in favour of the dot product; an Intel Xeon with AVX512_BF16: 0.5×), far outside the probe's noise.
pub fn bf16_dot_pays() -> bool {
    bf16_dot_ratio().is_some_and(|r| r >= 0.9)
}

/// The bf16 dot product's throughput over f32 FMA's on one thread, as probed once per process (see
/// [`bf16_dot_pays`]); None when the CPU has no AVX512_BF16.
pub fn bf16_dot_ratio() -> Option<f64> {
    static RATIO: std::sync::OnceLock<Option<f64>> = std::sync::OnceLock::new();
    *RATIO.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let f = crate::isa::Features::detect();
            if f.avx512f && f.avx512_bf16 {
                let (dot, fma) = dot_and_fma_rates();
                return Some(dot / fma.max(1e-9));
            }
        }
        None
    })
}

/// (bf16 dot, f32 FMA) flops per second of one thread, best of 4 alternating bursts.
#[cfg(target_arch = "x86_64")]
fn dot_and_fma_rates() -> (f64, f64) {
    const ITERS: u64 = 2000; // 12 chains × 2000 iterations: ≈ 0.25 ms at 1 instruction per cycle
    let rate = |f: &dyn Fn(u64) -> f64| {
        let t0 = Instant::now();
        let flops = f(ITERS);
        flops / t0.elapsed().as_secs_f64().max(1e-9)
    };
    let (mut dot, mut fma) = (0f64, 0f64);
    for _ in 0..4 {
        // Safety: the caller checked AVX-512 F and AVX512_BF16.
        dot = dot.max(rate(&|n| unsafe { x86::dp_loop(n) }));
        fma = fma.max(rate(&|n| unsafe { x86::fma512(n) }));
    }
    (dot, fma)
}

/// Runs `f(iters)` (which returns the flops it did) on every thread; best of 5 rounds of ~40 ms.
fn compute_peak(k: &Kernels, f: &(dyn Fn(u64) -> f64 + Sync)) -> f64 {
    let threads = k.threads();
    // Calibrate one thread to ~40 ms.
    let mut iters = 1u64 << 12;
    loop {
        let t0 = Instant::now();
        f(iters);
        if t0.elapsed().as_secs_f64() > 0.01 || iters > 1 << 34 {
            iters = (iters as f64 * 0.04 / t0.elapsed().as_secs_f64().max(1e-9)) as u64;
            break;
        }
        iters *= 4;
    }
    let flops = std::sync::Mutex::new(0f64);
    let mut best = 0f64;
    for _ in 0..5 {
        *flops.lock().unwrap() = 0.0;
        let t0 = Instant::now();
        k.parallel_for(threads, &|_| {
            let fl = f(iters);
            *flops.lock().unwrap() += fl;
        });
        let dt = t0.elapsed().as_secs_f64();
        best = best.max(*flops.lock().unwrap() / dt / 1e9);
    }
    best
}

/// XOR of every 8-byte word of x (the tail bytes folded in one by one): a read of every byte that no
/// value can slow down (unlike float adds of arbitrary bits, which may hit denormals).
fn xor_fold(isa: Isa, x: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    // Safety: the ISA of a `Kernels` is supported by this CPU.
    unsafe {
        match isa {
            Isa::Avx512 => return x86::xor512(x),
            Isa::Avx2 => return x86::xor256(x),
            _ => {}
        }
    }
    let _ = isa;
    xor_words(x)
}

/// Scalar XOR fold: 8 independent u64 accumulators, then the tail.
fn xor_words(x: &[u8]) -> u64 {
    let mut acc = [0u64; 8];
    let chunks = x.chunks_exact(64);
    let tail = chunks.remainder();
    for c in chunks {
        for (i, a) in acc.iter_mut().enumerate() {
            *a ^= u64::from_le_bytes(c[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        }
    }
    let mut r = acc.iter().fold(0, |r, a| r ^ a);
    for (i, &b) in tail.iter().enumerate() {
        r ^= (b as u64) << (8 * (i % 8));
    }
    r
}

fn fma_loop(isa: Isa, iters: u64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    // Safety: the ISA of a `Kernels` is supported by this CPU.
    unsafe {
        match isa {
            Isa::Avx512 => return x86::fma512(iters),
            Isa::Avx2 => return x86::fma256(iters),
            _ => {}
        }
    }
    let _ = isa;
    let mut acc = [1f32; 8];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = a.mul_add(0.999_999, 1e-7);
        }
    }
    std::hint::black_box(acc);
    iters as f64 * 16.0
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Independent accumulators: enough to cover FMA latency (4) × issue rate (2) on current cores.
    const CHAINS: usize = 12;

    /// `iters` × 4 independent `tdpbf16ps` (16 × 16 × 32 products each) on tiles loaded once; returns
    /// the flops. Safety: AMX-TILE/BF16 with the process's tile permission.
    pub unsafe fn amx_loop(iters: u64) -> f64 {
        let ones = vec![0x3f80u16; 16 * 32]; // bf16 1.0
                                             // the kernels' configuration and register plan (`x86::amx::tiles`): C0..C3 += A0,A1 × B0,B1
        let tiles = crate::x86::amx::tiles::Tiles::begin();
        tiles.zero();
        let a = ones.as_ptr();
        tiles.step(a, a, 64, a, a, 64);
        std::arch::asm!(
            "2:",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "dec {n}",
            "jnz 2b",
            n = inout(reg) iters.max(1) => _,
            options(nostack, nomem)
        );
        drop(tiles);
        iters.max(1) as f64 * 4.0 * 16.0 * 16.0 * 32.0 * 2.0
    }

    /// XOR fold (see `xor_fold`) with 8 independent 512-bit accumulators.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn xor512(x: &[u8]) -> u64 {
        let mut acc = [_mm512_setzero_si512(); 8];
        let chunks = x.chunks_exact(512);
        let tail = chunks.remainder();
        for c in chunks {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_xor_si512(*a, _mm512_loadu_si512(c.as_ptr().add(j * 64) as *const _));
            }
        }
        let mut s = acc[0];
        for a in &acc[1..] {
            s = _mm512_xor_si512(s, *a);
        }
        let mut w = [0u64; 8];
        _mm512_storeu_si512(w.as_mut_ptr() as *mut _, s);
        w.iter().fold(super::xor_words(tail), |r, v| r ^ v)
    }

    /// XOR fold with 8 independent 256-bit accumulators.
    #[target_feature(enable = "avx2")]
    pub unsafe fn xor256(x: &[u8]) -> u64 {
        let mut acc = [_mm256_setzero_si256(); 8];
        let chunks = x.chunks_exact(256);
        let tail = chunks.remainder();
        for c in chunks {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm256_xor_si256(*a, _mm256_loadu_si256(c.as_ptr().add(j * 32) as *const _));
            }
        }
        let mut s = acc[0];
        for a in &acc[1..] {
            s = _mm256_xor_si256(s, *a);
        }
        let mut w = [0u64; 4];
        _mm256_storeu_si256(w.as_mut_ptr() as *mut _, s);
        w.iter().fold(super::xor_words(tail), |r, v| r ^ v)
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512(iters: u64) -> f64 {
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        let a = _mm512_set1_ps(0.999_999);
        let b = _mm512_set1_ps(1e-7);
        for _ in 0..iters {
            for c in acc.iter_mut() {
                *c = _mm512_fmadd_ps(*c, a, b);
            }
        }
        std::hint::black_box(acc);
        iters as f64 * (CHAINS * 16 * 2) as f64
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(iters: u64) -> f64 {
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        let a = _mm256_set1_ps(0.999_999);
        let b = _mm256_set1_ps(1e-7);
        for _ in 0..iters {
            for c in acc.iter_mut() {
                *c = _mm256_fmadd_ps(*c, a, b);
            }
        }
        std::hint::black_box(acc);
        iters as f64 * (CHAINS * 8 * 2) as f64
    }

    /// Safety: the CPU has AVX-512 F and AVX512_BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dp_loop(iters: u64) -> f64 {
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        let a: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3f80)); // 1.0
        let b: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3380)); // 2^-24
        for _ in 0..iters {
            for c in acc.iter_mut() {
                *c = _mm512_dpbf16_ps(*c, a, b);
            }
        }
        std::hint::black_box(acc);
        // 16 lanes × 2 products × 2 flops
        iters as f64 * (CHAINS * 64) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every level's XOR fold equals the scalar twin on awkward lengths and misaligned starts, and a
    /// changed byte anywhere changes the result (every byte is read).
    #[test]
    fn xor_fold_matches_scalar_twin() {
        let data: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for k in Kernels::all_available() {
            for n in [
                0usize, 1, 7, 8, 63, 64, 65, 255, 256, 257, 511, 512, 513, 1023, 4097,
            ] {
                for off in [0usize, 1, 3] {
                    let x = &data[off..off + n];
                    assert_eq!(
                        xor_fold(k.isa(), x),
                        xor_words(x),
                        "{} n={n} off={off}",
                        k.isa()
                    );
                    if n > 0 {
                        let mut y = x.to_vec();
                        y[n - 1 - n / 3] ^= 0x10;
                        assert_ne!(
                            xor_fold(k.isa(), &y),
                            xor_fold(k.isa(), x),
                            "{} n={n}",
                            k.isa()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn bandwidth_of_a_buffer_is_positive_and_finite() {
        let k = Kernels::detect().unwrap().with_threads(2);
        let data = vec![7u8; 1 << 20];
        let bw = read_bandwidth_of(&k, &data, 2);
        assert!(bw.is_finite() && bw > 0.0, "{bw}");
    }
}
