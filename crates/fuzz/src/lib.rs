//! Fuzzing on stable Rust: a seeded mutation loop over the engine's parsers.
//!
//! Each target takes bytes and runs one parser (and what follows it) the way a file or request reaches the
//! engine. The loop starts from real seed inputs, mutates them (bit flips, interesting bytes and numbers,
//! chunk insert/delete/duplicate, numbers in JSON replaced by huge, negative or zero ones) and runs each
//! mutant under three guards:
//! - a panic is caught and reported;
//! - a per-input time limit: a watchdog thread saves the input and aborts the process when one input uses
//!   more CPU time than [`TIME_LIMIT`] (a hang cannot be interrupted in-process). CPU time, not wall
//!   clock, so an input that is merely slowed by a loaded machine is not taken for a hang; a wall-clock
//!   backstop, [`WALL_LIMIT`], still ends an input that blocks without using the CPU;
//! - an allocation budget: a tracking global allocator records the peak bytes live during each input;
//!   over the budget is a failure (and a single allocation over a hard cap is refused, so the target sees
//!   an allocation error instead of the machine running out of memory).
//!
//! A failing input is saved under `testdata/fuzz/<target>/` and replayed by the test suite from then on.
//! Run one target for N minutes: `cargo run --release -p qwen3vl-fuzz -- <target> --minutes N [--seed S]`.

pub mod alloc;
pub mod mutate;
pub mod targets;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Peak bytes one input may have live at once (above what was live before it).
pub const ALLOC_BUDGET: usize = 2 << 30;
/// Most CPU time one input may use: the CPU time of the whole process while it runs (a target's helper
/// threads, such as the schema compiler's, count; the fuzz loop is the only work in its process).
pub const TIME_LIMIT: Duration = Duration::from_secs(10);
/// Longest one input may run by the wall clock, whatever CPU time it used: a generous 6× [`TIME_LIMIT`],
/// for an input that blocks (or a machine so loaded that it stays starved).
pub const WALL_LIMIT: Duration = Duration::from_secs(6 * TIME_LIMIT.as_secs());
/// When set, each input is written to this file before it runs (to recover the input of a crash that
/// ends the process, such as a stack overflow; rerun with the same seed).
pub const LAST_INPUT_ENV: &str = "QWEN3VL_FUZZ_LAST";

/// A failure found by the loop.
#[derive(Debug)]
pub struct Failure {
    pub target: String,
    pub what: String,
    pub saved: Option<PathBuf>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.target, self.what)?;
        if let Some(p) = &self.saved {
            write!(f, " (input saved to {})", p.display())?;
        }
        Ok(())
    }
}

/// Where regression inputs of `target` live.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/fuzz")
        .join(target)
}

fn save(target: &str, input: &[u8]) -> Option<PathBuf> {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).ok()?;
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in input {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    let p = dir.join(format!("crash-{h:016x}"));
    std::fs::write(&p, input).ok()?;
    Some(p)
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub inputs: u64,
    pub ok: u64,
    pub refused: u64,
    pub max_input_ms: f64,
    pub max_alloc: usize,
}

/// Runs one input under the guards.
pub fn run_one(t: &targets::Target, input: &[u8], stats: &mut Stats) -> Result<(), Failure> {
    let fail = |what: String, saved: bool| Failure {
        target: t.name.to_string(),
        what,
        saved: if saved { save(t.name, input) } else { None },
    };
    let t0 = Instant::now();
    alloc::start();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (t.run)(input)));
    let peak = alloc::stop();
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    stats.inputs += 1;
    stats.max_input_ms = stats.max_input_ms.max(ms);
    stats.max_alloc = stats.max_alloc.max(peak);
    match r {
        Ok(true) => stats.ok += 1,
        Ok(false) => stats.refused += 1,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            return Err(fail(format!("panicked: {msg}"), true));
        }
    }
    if peak > ALLOC_BUDGET {
        return Err(fail(
            format!("allocated {peak} bytes at peak, over the budget of {ALLOC_BUDGET}"),
            true,
        ));
    }
    if alloc::refused() {
        return Err(fail(
            "an allocation over the hard cap was refused".into(),
            true,
        ));
    }
    Ok(())
}

/// Replays every saved regression input of `t`.
pub fn replay(t: &targets::Target) -> Result<usize, Failure> {
    let mut stats = Stats::default();
    let mut n = 0;
    if let Ok(dir) = std::fs::read_dir(corpus_dir(t.name)) {
        let mut files: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let input = std::fs::read(&f).map_err(|e| Failure {
                target: t.name.into(),
                what: format!("{}: {e}", f.display()),
                saved: None,
            })?;
            run_one(t, &input, &mut stats).map_err(|mut e| {
                e.what = format!("{} (regression input {})", e.what, f.display());
                e.saved = None;
                e
            })?;
            n += 1;
        }
    }
    Ok(n)
}

/// CPU time used so far by every thread of this process (`CLOCK_PROCESS_CPUTIME_ID`).
pub fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // Safety: `ts` is a timespec we own for the call to fill; the clock id is a constant the OS knows.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Which limit an input that has used `cpu` of CPU time in `wall` has passed, if any, said for the
/// report.
pub fn over_limit(cpu: Duration, wall: Duration) -> Option<String> {
    if cpu > TIME_LIMIT {
        Some(format!(
            "one input used more than the CPU-time limit of {TIME_LIMIT:?} ({cpu:.1?} of CPU in {wall:.1?})"
        ))
    } else if wall > WALL_LIMIT {
        Some(format!(
            "one input ran past the wall-clock limit of {WALL_LIMIT:?} with only {cpu:.1?} of CPU (blocked, or \
             starved by a loaded machine)"
        ))
    } else {
        None
    }
}

/// The input being run, and when it started by the wall clock and by the process's CPU time (read by
/// the watchdog).
type Running = Option<(Instant, Duration, Vec<u8>)>;

/// Mutates the seeds of `t` for `iterations` inputs or until `deadline`, whichever comes first.
pub fn fuzz(
    t: &targets::Target,
    seed: u64,
    iterations: u64,
    deadline: Duration,
) -> Result<Stats, Failure> {
    let seeds = (t.seeds)();
    assert!(!seeds.is_empty(), "{}: no seed inputs", t.name);
    let mut rng = mutate::Rng::new(seed);
    let mut stats = Stats::default();
    let start = Instant::now();
    let current: Arc<Mutex<Running>> = Arc::new(Mutex::new(None));
    let done = Arc::new(AtomicU64::new(0));
    let watchdog = {
        let (current, done, name) = (current.clone(), done.clone(), t.name);
        std::thread::spawn(move || {
            while done.load(Ordering::Relaxed) == 0 {
                std::thread::sleep(Duration::from_millis(200));
                let guard = current.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((t0, cpu0, input)) = guard.as_ref() {
                    let cpu = process_cpu_time().saturating_sub(*cpu0);
                    if let Some(what) = over_limit(cpu, t0.elapsed()) {
                        let saved = save(name, input);
                        eprintln!("{name}: {what} (saved to {saved:?})");
                        std::process::abort();
                    }
                }
            }
        })
    };
    for s in &seeds {
        run_one(t, s, &mut stats)?;
    }
    // A crash that ends the process (a stack overflow aborts it) leaves its input in this file.
    let last = std::env::var_os(LAST_INPUT_ENV).map(PathBuf::from);
    let mut result = Ok(());
    while stats.inputs < iterations && start.elapsed() < deadline {
        let base = &seeds[rng.below(seeds.len())];
        let input = mutate::mutate(&mut rng, base);
        if let Some(p) = &last {
            let _ = std::fs::write(p, &input);
        }
        *current.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), process_cpu_time(), input.clone()));
        let r = run_one(t, &input, &mut stats);
        *current.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(e) = r {
            result = Err(e);
            break;
        }
    }
    done.store(1, Ordering::Relaxed);
    let _ = watchdog.join();
    result.map(|()| stats)
}
