//! Scaled dot-product attention over strided (rows, heads, head_dim) views of f32.
//!
//! For query row i and query head h (kv head g = h / (n_q_heads / n_kv_heads), grouped-query attention):
//!
//! ```text
//! out[i, h, :] = Σ_j softmax_j(scale · q[i, h, :]·k[j, g, :]) · v[j, g, :]
//! ```
//!
//! over all keys j < kv_len, or, when causal, over j <= i + (kv_len - q_len) (the queries are the last
//! q_len positions of the key sequence: a prefill has q_len == kv_len, a decode step q_len == 1).
//!
//! q, k and v are read through [`AttnLayout`] strides, so the model can pass views into a fused qkv buffer
//! or a head-major KV cache without copying; `out` is (q_len, n_q_heads, head_dim) contiguous.
//!
//! Levels:
//! - scalar (`scalar.rs`): the reference. Plain loops, two-pass softmax in f32 with `f32::exp`.
//! - SSE4.1 / AVX2 / AVX-512: flash attention (online softmax: running max m, running sum l, the
//!   accumulator rescaled when m grows), written once over [`crate::simd::Simd`] and instantiated per level
//!   in `x86.rs`. A task is (kv head, query tile, key range); its rows are every q head sharing that kv
//!   head for a range of positions, so each K/V row is loaded once for the whole GQA group. K and V are
//!   read in place through their strides (no packing), in tiles of 256 keys; tiles above the causal
//!   diagonal are skipped. Two kernels:
//!   - `lanes.rs` (prefill, vision: at least a vector of task rows): the rows sit in the vector lanes, so
//!     q·kᵀ and p·v are broadcast-FMA register tiles and the softmax needs no horizontal reductions;
//!   - `flash.rs` (decode: a few rows): dot products over head_dim, several keys and rows per block.
//! - Tasks run on the shared pool ([`Kernels::parallel_for`]), longest first (see `plan`). Prefill:
//!   (query tile, kv head) tasks. Decode (fewer than 8 (row, q head) pairs per kv head): each task takes
//!   several kv heads, so it reads whole rows of a row-major cache; with ≥ 512 keys and several threads,
//!   every head and the keys split into chunks across the threads, whose partial (m, l, accumulator) are
//!   merged at the end (flash-decoding). A short prefill after a long context with few tasks splits the
//!   keys the same way.
//! - `Fast` path (`AttnParams::path`), AVX-512 with AVX512_BF16 (or AMX), prefill-shaped calls (at least 16
//!   (query row, q head) pairs per query tile): `bf16.rs`, the lanes kernel on `vdpbf16ps`. K and V are
//!   rounded to bf16 once per call, q·scale once per task, the softmax weights P once per key tile; the
//!   products accumulate in f32 and the online softmax (m, l, rescaling) is f32. Where the process may use
//!   AMX ([`Kernels::amx`]), the same kernel runs both products on tiles (`amx.rs`: same roundings, same
//!   softmax, K and V packed in the tiles' layouts). Elsewhere (other levels, decode) `Fast` runs the
//!   exact kernels; [`Kernels::attention_precision`] tells which.
//!
//! Accuracy (max abs error, tests/attention.rs):
//! - `Exact`: every level within 1e-5 · max|v| of an f64 evaluation of the formula on the tests' shapes.
//! - `Fast` (bf16 kernel): rounding scale·q and k to bf16 (RNE, 8 significant bits: relative error
//!   ≤ 2⁻⁸ each) moves each score by at most Δ = (2⁻⁷ + 2⁻¹⁶)·|scale|·max_{i,j} Σ_d |q_id·k_jd|, hence each
//!   softmax weight by a factor within e^(±2Δ); rounding v and P adds 2⁻⁸ each (l sums the unrounded f32
//!   P, as torch's bf16 SDPA does); its e^x (relative error ≤ 1e-5) adds 2e-5. So |out − f64| ≤
//!   (e^(2Δ) − 1 + 2⁻⁷ + 2⁻¹⁶ + 2e-5)·max|v| + the f32 arithmetic (1e-5·max|v| on the tests' shapes), and
//!   against an f64 evaluation on the rounded operands only P's rounding and e^x remain:
//!   ≤ (2⁻⁸(1 + 2⁻⁸) + 3e-5)·max|v|. Denormal operands are flushed to 0
//!   (`vdpbf16ps`). For head_dim 64, scale 1/8 and uniform q, k in [-1, 1) the first bound is ~6e-2 ·
//!   max|v|; measured ≤ 2.3e-3 · max|v| (≤ 0.25 of the second bound) on the tests' sizes.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod bf16;
mod flash;
mod lanes;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::isa::Isa;
pub use crate::matmul::MatmulPath;
use crate::SendPtr;
use crate::{KernelError, Kernels};
use std::cell::RefCell;

/// Element strides of a (rows, heads, head_dim) view: element (r, h, d) is at `r·row_stride +
/// h·head_stride + d`. The head_dim values of one (row, head) are contiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnLayout {
    pub row_stride: usize,
    pub head_stride: usize,
}

impl AttnLayout {
    /// A contiguous (rows, heads, head_dim) tensor.
    pub const fn contiguous(heads: usize, head_dim: usize) -> AttnLayout {
        AttnLayout {
            row_stride: heads * head_dim,
            head_stride: head_dim,
        }
    }

    /// A head-major cache (heads, max_len, head_dim), read as (rows, heads, head_dim).
    pub const fn head_major(max_len: usize, head_dim: usize) -> AttnLayout {
        AttnLayout {
            row_stride: head_dim,
            head_stride: max_len * head_dim,
        }
    }
}

/// Shape and options of one attention call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnParams {
    pub n_q_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub q_len: usize,
    pub kv_len: usize,
    /// Multiplies q·k (typically head_dim^-0.5). Must be finite.
    pub scale: f32,
    /// Query row i attends keys j <= i + (kv_len - q_len) only. Needs kv_len >= q_len.
    pub causal: bool,
    /// `Exact`: f32 arithmetic. `Fast`: prefill-shaped calls on AVX512_BF16 round q·scale, k, v and the
    /// softmax weights to bf16 for `vdpbf16ps` (f32 accumulation and softmax); see the module docs for the
    /// bound. Elsewhere `Fast` runs the exact path.
    pub path: MatmulPath,
}

const OP: &str = "attention";

fn invalid(msg: String) -> KernelError {
    KernelError::Invalid { op: OP, msg }
}

/// Checks that every element of a (rows, heads, hd) view with layout `l` lies inside a slice of `len`.
fn check_view(
    what: &str,
    len: usize,
    l: AttnLayout,
    rows: usize,
    heads: usize,
    hd: usize,
) -> Result<(), KernelError> {
    if rows == 0 || heads == 0 || hd == 0 {
        return Ok(());
    }
    // The last element read is (rows-1, heads-1, hd-1); strides are unsigned so it is the largest index.
    let end = (rows - 1)
        .checked_mul(l.row_stride)
        .zip((heads - 1).checked_mul(l.head_stride))
        .and_then(|(a, b)| a.checked_add(b))
        .and_then(|a| a.checked_add(hd));
    match end {
        Some(end) if end <= len => Ok(()),
        _ => Err(invalid(format!(
            "{what}: a ({rows}, {heads}, {hd}) view with row_stride {} and head_stride {} needs {} elements, \
             the slice has {len}",
            l.row_stride,
            l.head_stride,
            end.map_or("more than usize::MAX".to_string(), |e| e.to_string()),
        ))),
    }
}

#[allow(clippy::too_many_arguments)]
fn validate(
    q: &[f32],
    ql: AttnLayout,
    k: &[f32],
    kl: AttnLayout,
    v: &[f32],
    vl: AttnLayout,
    out: &[f32],
    p: &AttnParams,
) -> Result<(), KernelError> {
    if p.n_kv_heads == 0 {
        return Err(invalid("n_kv_heads is 0".into()));
    }
    if !p.n_q_heads.is_multiple_of(p.n_kv_heads) {
        return Err(invalid(format!(
            "n_q_heads {} is not a multiple of n_kv_heads {} (grouped-query attention)",
            p.n_q_heads, p.n_kv_heads
        )));
    }
    if !p.scale.is_finite() {
        return Err(invalid(format!("scale is {}", p.scale)));
    }
    if p.causal && p.kv_len < p.q_len {
        return Err(invalid(format!(
            "causal attention needs kv_len >= q_len (the queries are the last q_len positions), got q_len {} \
             and kv_len {}",
            p.q_len, p.kv_len
        )));
    }
    if p.q_len > 0 && p.n_q_heads > 0 && p.kv_len == 0 {
        return Err(invalid(format!(
            "kv_len is 0: {} query rows have no keys to attend",
            p.q_len
        )));
    }
    let out_len = p
        .q_len
        .checked_mul(p.n_q_heads)
        .and_then(|a| a.checked_mul(p.head_dim))
        .ok_or_else(|| invalid("q_len · n_q_heads · head_dim overflows usize".into()))?;
    crate::ops::check_len(OP, "out", out_len, out.len())?;
    check_view("q", q.len(), ql, p.q_len, p.n_q_heads, p.head_dim)?;
    check_view("k", k.len(), kl, p.kv_len, p.n_kv_heads, p.head_dim)?;
    check_view("v", v.len(), vl, p.kv_len, p.n_kv_heads, p.head_dim)?;
    Ok(())
}

impl Kernels {
    /// Scaled dot-product attention (see the module docs for the formula).
    ///
    /// q: (q_len, n_q_heads, head_dim) with layout `ql`; k, v: (kv_len, n_kv_heads, head_dim) with layouts
    /// `kl`, `vl`; out: (q_len, n_q_heads, head_dim) contiguous. Every view is checked to lie inside its
    /// slice; a bad shape or stride is a [`KernelError`] naming the argument.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        q: &[f32],
        ql: AttnLayout,
        k: &[f32],
        kl: AttnLayout,
        v: &[f32],
        vl: AttnLayout,
        out: &mut [f32],
        p: &AttnParams,
    ) -> Result<(), KernelError> {
        validate(q, ql, k, kl, v, vl, out, p)?;
        if out.is_empty() {
            return Ok(());
        }
        match task_fn(self.isa()) {
            None => scalar::attention(q, ql, k, kl, v, vl, out, p),
            Some(f) => {
                let job = Job {
                    q,
                    ql,
                    k,
                    kl,
                    v,
                    vl,
                    p: *p,
                    group: p.n_q_heads / p.n_kv_heads,
                    out: SendPtr(out.as_mut_ptr()),
                    partial: SendPtr(std::ptr::null_mut()),
                    slot_len: 0,
                    kb: &[],
                    vb: &[],
                };
                run_tasks(self, f, job);
            }
        }
        Ok(())
    }

    /// The arithmetic [`Kernels::attention`] runs for `p`: `Fast` only when `p.path` is `Fast` and the
    /// call takes the bf16 kernel (AVX512_BF16, prefill-shaped: at least 16 (query row, q head) pairs per
    /// query tile), else `Exact`.
    pub fn attention_precision(&self, p: &AttnParams) -> MatmulPath {
        let group = p.n_q_heads.checked_div(p.n_kv_heads).unwrap_or(1).max(1);
        let pl = plan(p, group, self.threads());
        match bf16_kernel(self, p, &pl, group) {
            Some(_) => MatmulPath::Fast,
            None => MatmulPath::Exact,
        }
    }
}

/// One ISA's task kernel (`flash::run` instantiated at a `#[target_feature]` boundary).
/// Safety: the CPU supports the level; `job` was validated and `task` comes from [`plan`].
type TaskFn = unsafe fn(&Job, &Task, &mut Vec<f32>);

fn task_fn(isa: Isa) -> Option<TaskFn> {
    #[cfg(target_arch = "x86_64")]
    {
        match isa {
            Isa::Scalar => None,
            Isa::Sse41 => Some(x86::task_sse41),
            Isa::Avx2 => Some(x86::task_avx2),
            Isa::Avx512 => Some(x86::task_avx512),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        None
    }
}

/// The validated arguments of one call, shared by its tasks.
pub(crate) struct Job<'a> {
    pub q: &'a [f32],
    pub ql: AttnLayout,
    pub k: &'a [f32],
    pub kl: AttnLayout,
    pub v: &'a [f32],
    pub vl: AttnLayout,
    pub p: AttnParams,
    /// Query heads per kv head.
    pub group: usize,
    /// out: (q_len, n_q_heads, head_dim).
    out: SendPtr<f32>,
    /// Split-KV partials: one slot per task, slot_len = (rows of the largest task)·(2 + head_dim) floats, each row
    /// [max, sum, unnormalized accumulator (head_dim)].
    partial: SendPtr<f32>,
    slot_len: usize,
    /// The bf16 kernel's packed K and V of every kv head (see `bf16.rs`); else empty.
    pub kb: &'a [u32],
    pub vb: &'a [u32],
}

/// One unit of work: kv heads `g..g + ng`, query rows `i0..i1` (with all `group` q heads of each kv head)
/// against keys `ks..ke`. The task's rows are ordered (kv head, query row, q head of the group): row r is
/// kv head g + r / rph, query row i0 + (r % rph) / group, q head (g + r / rph)·group + r % group, with
/// rph = (i1 − i0)·group rows per kv head.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Task {
    pub g: usize,
    /// kv heads of the task (1 except for decode tasks, which read several heads of each cache row).
    pub ng: usize,
    pub i0: usize,
    pub i1: usize,
    pub ks: usize,
    pub ke: usize,
    /// `Some(slot)`: write a partial result to that slot (split keys); `None`: write the final rows to out.
    pub slot: Option<usize>,
}

impl Job<'_> {
    /// Keys row i may attend: j < limit(i).
    #[inline(always)]
    pub fn limit(&self, i: usize) -> usize {
        if self.p.causal {
            i + (self.p.kv_len - self.p.q_len) + 1
        } else {
            self.p.kv_len
        }
    }

    /// Keys of the tile `[j0, j0 + w)` that row r of a lane-major task t may see (its rows are (query
    /// row, q head of the group) with the query row i0 + r / group).
    #[inline(always)]
    pub fn visible(&self, t: &Task, r: usize, j0: usize, w: usize) -> usize {
        self.limit(t.i0 + r / self.group).saturating_sub(j0).min(w)
    }

    /// Writes row r of task t: to out (o / l) or to the task's partial slot ([m, l, o]).
    /// `o` holds head_dim values; l > 0 for a final row (every row attends at least key 0).
    #[inline(always)]
    pub fn emit(&self, t: &Task, r: usize, m: f32, l: f32, o: &[f32]) {
        let hd = self.p.head_dim;
        let o = &o[..hd];
        match t.slot {
            None => {
                let rph = (t.i1 - t.i0) * self.group;
                let i = t.i0 + (r % rph) / self.group;
                let h = (t.g + r / rph) * self.group + r % self.group;
                debug_assert!(i < self.p.q_len && h < self.p.n_q_heads);
                // Safety: out has q_len·n_q_heads·hd elements (validated); (i, h) lies in this task's rows,
                // which no other task writes, and `out` is borrowed mutably for the whole call.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        self.out.0.add((i * self.p.n_q_heads + h) * hd),
                        hd,
                    )
                };
                let inv = 1.0 / l;
                for (d, &x) in dst.iter_mut().zip(o) {
                    *d = x * inv;
                }
            }
            Some(slot) => {
                debug_assert!((r + 1) * (hd + 2) <= self.slot_len);
                // Safety: the partial buffer has one slot of slot_len floats per task (see `run_tasks`),
                // written only by that task.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        self.partial.0.add(slot * self.slot_len + r * (hd + 2)),
                        hd + 2,
                    )
                };
                dst[0] = m;
                dst[1] = l;
                dst[2..].copy_from_slice(o);
            }
        }
    }
}

/// (q rows × heads) per query tile: the rows that share each loaded (and, in the lanes kernel, packed)
/// K/V tile. 128 rather than 64: vision attention 9-17% faster at every level (`benches/attention.rs`).
const TILE_PAIRS: usize = 128;
/// Fewer (query row, q head) pairs per kv head than this is a decode step.
const DECODE_PAIRS: usize = 8;
/// Split the keys only if there are fewer (kv head, query tile) tasks than this many per thread ...
const SPLIT_TASKS_PER_THREAD: usize = 2;
/// ... and the keys are at least this long; each chunk gets at least SPLIT_MIN_CHUNK keys.
const SPLIT_MIN_KV: usize = 512;
const SPLIT_MIN_CHUNK: usize = 256;

/// How a call is cut into tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Plan {
    /// Query rows per query tile.
    tile_rows: usize,
    /// kv heads per task (the last task of a query tile may have fewer).
    heads: usize,
    /// Key chunks per (query tile, head group); > 1 means partial results are merged.
    chunks: usize,
}

/// The plan for `threads` threads.
///
/// Prefill (q_len·group >= DECODE_PAIRS): tasks are (query tile, kv head); if there are fewer than
/// SPLIT_TASKS_PER_THREAD per thread and the keys are long, the keys are split too.
/// Decode: one query tile, and each task takes several kv heads so that it reads whole rows of a
/// row-major cache (all heads of a position are adjacent): with long keys all heads and the keys split
/// across threads, else the heads split across threads.
fn plan(p: &AttnParams, group: usize, threads: usize) -> Plan {
    let long = threads > 1 && p.kv_len >= SPLIT_MIN_KV;
    if p.q_len * group < DECODE_PAIRS {
        let (heads, chunks) = if long {
            let chunks = (SPLIT_TASKS_PER_THREAD * threads)
                .min(p.kv_len / SPLIT_MIN_CHUNK)
                .max(1);
            (p.n_kv_heads, chunks)
        } else {
            (p.n_kv_heads.div_ceil(threads.min(p.n_kv_heads)), 1)
        };
        return Plan {
            tile_rows: p.q_len.max(1),
            heads,
            chunks,
        };
    }
    let tile_rows = (TILE_PAIRS / group).clamp(1, p.q_len.max(1));
    let base = p.q_len.div_ceil(tile_rows) * p.n_kv_heads;
    let want = SPLIT_TASKS_PER_THREAD * threads;
    let chunks = if long && base < want {
        want.div_ceil(base).min(p.kv_len / SPLIT_MIN_CHUNK).max(1)
    } else {
        1
    };
    Plan {
        tile_rows,
        heads: 1,
        chunks,
    }
}

thread_local! {
    /// Per-thread scratch of the task kernels (packed tiles, scores, accumulators), reused across calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's buffer for the bf16 kernel's packed K and V, reused across calls.
    static PACKED: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Query rows (× q heads) per task from which the `Fast` path runs the bf16 kernel: a vector of lanes.
const BF16_MIN_ROWS: usize = 16;

/// The bf16 task kernel, if this call takes the `Fast` bf16 path: `Fast`, a prefill-shaped plan (one kv
/// head per task, at least a vector of rows per query tile), and AMX ([`Kernels::amx`]: the products on
/// tiles) or AVX-512 with the bf16 dot product in use. `.1`: the AMX kernel (its own K/V layouts).
fn bf16_kernel(k: &Kernels, p: &AttnParams, plan: &Plan, group: usize) -> Option<(TaskFn, bool)> {
    #[cfg(target_arch = "x86_64")]
    if p.path == MatmulPath::Fast && plan.heads == 1 && plan.tile_rows * group >= BF16_MIN_ROWS {
        if k.amx() {
            return Some((bf16::run_amx, true));
        }
        if k.bf16_dot() {
            return Some((bf16::run, false));
        }
    }
    let _ = (k, p, plan, group);
    None
}

/// The packed K/V buffer is kept for the next call up to this many words (64 MiB).
#[cfg(target_arch = "x86_64")]
const PACKED_KEEP_WORDS: usize = 16 << 20;

/// Keys per packing task of the bf16 path (even).
#[cfg(target_arch = "x86_64")]
const PACK_KEYS: usize = 512;

/// Rounds K and V of every kv head into `buf` (the bf16 kernel's layouts), threaded over (head, keys);
/// returns (kb, vb) words.
#[cfg(target_arch = "x86_64")]
fn pack_bf16(k: &Kernels, job: &Job, buf: &mut Vec<u32>, tiles: bool) -> (usize, usize) {
    let p = &job.p;
    let (kw, vw) = if tiles {
        amx::packed_words(p.n_kv_heads, p.kv_len, p.head_dim)
    } else {
        bf16::packed_words(p.n_kv_heads, p.kv_len, p.head_dim)
    };
    if buf.len() < kw + vw {
        buf.resize(kw + vw, 0);
    }
    if tiles {
        // the AMX layouts' padding must read as zeros
        buf[..kw + vw].fill(0);
    }
    let (kb, vb) = buf.split_at_mut(kw);
    let (kb, vb) = (SendPtr(kb.as_mut_ptr()), SendPtr(vb.as_mut_ptr()));
    let blocks = p.kv_len.div_ceil(PACK_KEYS);
    k.parallel_for(p.n_kv_heads * blocks, &|ti| {
        let (g, b) = (ti / blocks, ti % blocks);
        let j1 = ((b + 1) * PACK_KEYS).min(p.kv_len);
        // Safety: the level has AVX512_BF16 (see `bf16_kernel`), the job was validated and each task
        // writes its own keys of head g.
        unsafe {
            if tiles {
                amx::pack_kv(job, kb.get(), vb.get(), g, b * PACK_KEYS, j1)
            } else {
                bf16::pack_kv(job, kb.get(), vb.get(), g, b * PACK_KEYS, j1)
            }
        }
    });
    (kw, vw)
}

fn run_tasks(k: &Kernels, f: TaskFn, job: Job) {
    let pl = plan(&job.p, job.group, k.threads());
    match bf16_kernel(k, &job.p, &pl, job.group) {
        #[cfg(target_arch = "x86_64")]
        Some((f, tiles)) => PACKED.with(|buf| {
            let mut buf = buf.borrow_mut();
            let (kw, vw) = pack_bf16(k, &job, &mut buf, tiles);
            let job = Job {
                kb: &buf[..kw],
                vb: &buf[kw..kw + vw],
                ..job
            };
            run_plan(k, f, job, pl, true);
            // keep a vision segment's or a usual prefill's buffer (a few MiB); free a long context's
            if buf.len() > PACKED_KEEP_WORDS {
                *buf = Vec::new();
            }
        }),
        _ => run_plan(k, f, job, pl, false),
    }
}

/// Runs the tasks of plan `pl` with task kernel `f`; `even`: key chunks start at even keys (bf16 pairs).
fn run_plan(k: &Kernels, f: TaskFn, mut job: Job, pl: Plan, even: bool) {
    let p = job.p;
    let group = job.group;
    let Plan {
        tile_rows,
        heads,
        chunks,
    } = pl;
    let n_qt = p.q_len.div_ceil(tile_rows);
    // start of key chunk c
    let bound = |c: usize| {
        let b = c * p.kv_len / chunks;
        if even && c < chunks {
            b & !1
        } else {
            b
        }
    };

    // Tasks, the longest first: with a causal mask the last query tiles see the most keys.
    let mut tasks = Vec::with_capacity(n_qt * p.n_kv_heads.div_ceil(heads) * chunks);
    for qt in (0..n_qt).rev() {
        for g in (0..p.n_kv_heads).step_by(heads) {
            for c in 0..chunks {
                let slot = (chunks > 1).then_some(tasks.len());
                tasks.push(Task {
                    g,
                    ng: heads.min(p.n_kv_heads - g),
                    i0: qt * tile_rows,
                    i1: ((qt + 1) * tile_rows).min(p.q_len),
                    ks: bound(c),
                    ke: bound(c + 1),
                    slot,
                });
            }
        }
    }

    let mut partial = Vec::new();
    if chunks > 1 {
        job.slot_len = tile_rows * group * heads * (p.head_dim + 2);
        partial = vec![0.0f32; tasks.len() * job.slot_len];
        job.partial = SendPtr(partial.as_mut_ptr());
    }

    let job = &job;
    let tasks = &tasks;
    k.parallel_for(tasks.len(), &|ti| {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            // Safety: `f` is the kernel of this Kernels' level (supported by the CPU), the job was
            // validated and the task comes from the plan above.
            unsafe { f(job, &tasks[ti], &mut s) }
        })
    });

    if chunks > 1 {
        merge(job, tasks, chunks, &partial);
    }
}

/// Combines the partial results of the key chunks of each (query tile, kv head) into out:
/// M = max_c m_c, out = Σ_c e^(m_c − M)·acc_c / Σ_c e^(m_c − M)·l_c.
fn merge(job: &Job, tasks: &[Task], chunks: usize, partial: &[f32]) {
    let hd = job.p.head_dim;
    let mut acc = vec![0.0f32; hd];
    for first in tasks.chunks(chunks) {
        let t0 = first[0];
        let rows = (t0.i1 - t0.i0) * job.group * t0.ng;
        for r in 0..rows {
            let row = |c: usize| {
                let s = t0.slot.unwrap() + c;
                &partial[s * job.slot_len + r * (hd + 2)..][..hd + 2]
            };
            let m = (0..chunks)
                .map(|c| row(c)[0])
                .fold(f32::NEG_INFINITY, f32::max);
            let mut l = 0.0f32;
            acc.fill(0.0);
            for c in 0..chunks {
                let pr = row(c);
                if pr[1] == 0.0 {
                    continue; // no key of this chunk is visible to the row
                }
                let w = (pr[0] - m).exp();
                l += w * pr[1];
                for (a, &x) in acc.iter_mut().zip(&pr[2..]) {
                    *a += w * x;
                }
            }
            let final_task = Task { slot: None, ..t0 };
            job.emit(&final_task, r, m, l, &acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q_len: usize, kv_len: usize, nq: usize, nkv: usize) -> AttnParams {
        AttnParams {
            n_q_heads: nq,
            n_kv_heads: nkv,
            head_dim: 64,
            q_len,
            kv_len,
            scale: 0.125,
            causal: true,
            path: MatmulPath::Exact,
        }
    }

    #[test]
    fn plans() {
        let plan = |q_len, kv_len, nq, nkv, threads| {
            let p = params(q_len, kv_len, nq, nkv);
            let x = super::plan(&p, nq / nkv, threads);
            (x.tile_rows, x.heads, x.chunks)
        };
        // decode, 2 threads, long cache: every head per task, keys split in 4 chunks (2 per thread)
        assert_eq!(plan(1, 4096, 16, 8, 2), (1, 8, 4));
        assert_eq!(plan(1, 600, 2, 1, 2), (1, 1, 2));
        // decode, short cache: heads split across the threads
        assert_eq!(plan(1, 300, 16, 8, 2), (1, 4, 1));
        assert_eq!(plan(1, 300, 16, 8, 3), (1, 3, 1));
        // decode, one thread: one task
        assert_eq!(plan(1, 4096, 16, 8, 1), (1, 8, 1));
        // prefill tiles: 128 (row, head) pairs per tile, one kv head per task
        assert_eq!(plan(512, 512, 16, 8, 2), (64, 1, 1));
        assert_eq!(plan(5, 5, 16, 8, 2), (5, 1, 1));
        // a short prefill after a long context on one kv head: split the keys
        assert_eq!(plan(8, 4096, 8, 1, 2), (8, 1, 4));
        // a wide group is prefill-shaped even for one query row
        assert_eq!(plan(1, 4096, 8, 1, 2), (1, 1, 4));
    }
}
