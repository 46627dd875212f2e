//! CPU time of the calling thread, shared by the examples that time kernels on a machine other jobs share
//! (`gemm_cpu`, `quant_cpu`): a thread's CPU seconds are disturbed much less than the wall clock.

/// CPU seconds of the calling thread so far.
pub fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // Safety: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Best CPU seconds of one call of `f` (after one warm-up call) over runs totalling ≥ `budget` CPU seconds.
pub fn best_seconds(budget: f64, f: &mut dyn FnMut()) -> f64 {
    f();
    let (mut best, mut spent) = (f64::INFINITY, 0f64);
    while spent < budget {
        let t0 = cpu_seconds();
        f();
        let dt = cpu_seconds() - t0;
        spent += dt;
        best = best.min(dt);
    }
    best
}
