//! The x86 instantiations of the attention kernels: one `#[target_feature]` entry point per level, which
//! runs a task with `lanes::run` when it has one kv head and at least a vector of query rows, else
//! `flash::run`.

use super::flash;
use super::lanes;
use super::{Job, Task};
use crate::simd::Simd;
use crate::x86::{avx2::Avx2, avx512::Avx512, sse41::Sse41};

/// Safety: the CPU supports SSE4.1; `job` was validated and `t` comes from the plan.
#[target_feature(enable = "sse4.1")]
pub(super) unsafe fn task_sse41(job: &Job, t: &Task, scratch: &mut Vec<f32>) {
    let s = Sse41::new_unchecked();
    if t.ng == 1 && (t.i1 - t.i0) * job.group >= Sse41::LANES {
        lanes::run::<_, 2, 6, 4>(s, job, t, scratch)
    } else {
        flash::run::<_, 2>(s, job, t, scratch)
    }
}

/// Safety: the CPU supports AVX2 and FMA; `job` was validated and `t` comes from the plan.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn task_avx2(job: &Job, t: &Task, scratch: &mut Vec<f32>) {
    let s = Avx2::new_unchecked();
    if t.ng == 1 && (t.i1 - t.i0) * job.group >= Avx2::LANES {
        lanes::run::<_, 2, 6, 4>(s, job, t, scratch)
    } else {
        flash::run::<_, 2>(s, job, t, scratch)
    }
}

/// Safety: the CPU supports AVX-512 F+BW+VL, AVX2 and FMA; `job` was validated and `t` comes from the plan.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(super) unsafe fn task_avx512(job: &Job, t: &Task, scratch: &mut Vec<f32>) {
    let s = Avx512::new_unchecked();
    if t.ng == 1 && (t.i1 - t.i0) * job.group >= Avx512::LANES {
        lanes::run::<_, 4, 6, 6>(s, job, t, scratch)
    } else {
        flash::run::<_, 4>(s, job, t, scratch)
    }
}
