//! A persistent thread pool for the kernels' fork/join parallelism.
//!
//! One pool exists per distinct thread count (made on first use and leaked, so [`crate::Kernels`] stays
//! `Copy` by holding a `&'static ThreadPool`). A pool of `n` threads has `n - 1` workers; the calling thread
//! is the n-th participant. Between ops the workers spin briefly (so back-to-back ops of a decode step wake
//! them in well under a microsecond), then park. They never spin when the pool has more threads than the
//! machine has cores.
//!
//! One op at a time runs on a pool: a second caller (another thread, or a nested `parallel_for` from inside
//! a task) that finds the pool busy runs its tasks itself, serially, instead of waiting.
//!
//! Protocol of one op (`run`): the caller publishes the job (closure pointer, task count), opens the
//! op's `entry` word (generation | count of workers that joined), then bumps `generation`. A worker that
//! sees the new generation joins by incrementing `entry` — only while it still names this generation and is
//! not closed — then claims task indices from the shared counter `next` until they run out, and
//! increments `done`. The caller claims tasks the same way; when none are left it closes `entry` and waits
//! until `done` equals the number of workers that joined. So the closure (borrowed from the caller's stack)
//! outlives every use of it, and the caller never waits for a worker the OS has not scheduled yet (on a
//! loaded machine that wait would be a whole time slice): such a worker finds the op closed and skips it.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, TryLockError};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(200);

/// A task body with its lifetime erased. Only dereferenced by workers that joined the op, before they
/// increment `done`.
#[derive(Clone, Copy)]
struct JobRef(*const (dyn Fn(usize) + Sync + 'static));

struct Job {
    f: JobRef,
    n_tasks: usize,
}

/// `entry` word: generation (high 32 bits) | CLOSED | number of workers that joined.
const CLOSED: u64 = 1 << 31;
const COUNT: u64 = CLOSED - 1;

struct Shared {
    /// Bumped once per op; workers compare it with the last one they saw.
    generation: AtomicU64,
    /// Written by the caller before `generation` is bumped; read by workers after they see the bump.
    job: UnsafeCell<Job>,
    /// Next unclaimed task index.
    next: AtomicUsize,
    /// (generation << 32) | CLOSED | joined workers, of the current op.
    entry: AtomicU64,
    /// Joined workers that have finished the current op.
    done: AtomicU64,
    /// A task panicked (on a worker); the caller re-raises.
    panicked: AtomicBool,
    /// Per worker: it is parked (or about to) and needs an `unpark`.
    sleeping: Vec<AtomicBool>,
    spin: Duration,
}

// Safety: `job` is only written by the caller holding `ThreadPool::busy` while no worker reads it (the
// previous op is closed and every worker that joined it is done), and only read by workers that joined
// the current op (after the release store of `entry` that followed the write), before they count `done`.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// A fixed set of persistent worker threads; see the module docs.
pub struct ThreadPool {
    threads: usize,
    shared: &'static Shared,
    workers: Vec<std::thread::Thread>,
    /// Held for the duration of one op.
    busy: Mutex<()>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.threads)
            .finish()
    }
}

/// The number of hardware threads (1 if unknown).
pub fn available_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl ThreadPool {
    /// The shared pool of `threads` threads (at least 1), made on first use and kept for the process.
    pub fn get(threads: usize) -> &'static ThreadPool {
        static POOLS: OnceLock<Mutex<Vec<&'static ThreadPool>>> = OnceLock::new();
        let threads = threads.max(1);
        let mut pools = POOLS
            .get_or_init(|| Mutex::new(Vec::new()))
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pools.iter().find(|p| p.threads == threads) {
            return p;
        }
        let p: &'static ThreadPool = Box::leak(Box::new(ThreadPool::spawn(threads)));
        pools.push(p);
        p
    }

    /// The pool with one thread per available hardware thread.
    pub fn default_pool() -> &'static ThreadPool {
        Self::get(available_threads())
    }

    fn spawn(threads: usize) -> ThreadPool {
        let n_workers = threads - 1;
        // Spinning with more threads than cores starves the thread that has the work: park at once then.
        let spin = if threads <= available_threads() {
            SPIN
        } else {
            Duration::ZERO
        };
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            generation: AtomicU64::new(0),
            job: UnsafeCell::new(Job {
                f: JobRef(&noop as &(dyn Fn(usize) + Sync)),
                n_tasks: 0,
            }),
            next: AtomicUsize::new(0),
            entry: AtomicU64::new(CLOSED),
            done: AtomicU64::new(0),
            panicked: AtomicBool::new(false),
            sleeping: (0..n_workers).map(|_| AtomicBool::new(false)).collect(),
            spin,
        }));
        let workers = (0..n_workers)
            .map(|i| {
                std::thread::Builder::new()
                    .name(format!("qwen3vl-pool{threads}-{i}"))
                    .spawn(move || worker(shared, i))
                    .expect("spawn a pool worker thread")
                    .thread()
                    .clone()
            })
            .collect();
        ThreadPool {
            threads,
            shared,
            workers,
            busy: Mutex::new(()),
        }
    }

    /// Threads taking part in an op (workers + the caller).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(i)` for every `i` in `0..n_tasks`, spread over the pool; the calling thread takes part.
    /// Returns when every task has finished. Tasks are claimed in increasing order from a shared counter,
    /// so a task should be a sizeable piece of work (tens of microseconds or more).
    /// A panic in a task is re-raised here after all tasks have finished.
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let workers = self.workers.len().min(n_tasks.saturating_sub(1));
        if workers == 0 {
            return (0..n_tasks).for_each(f);
        }
        // A busy pool (nested call, or another thread's op): run serially here rather than wait.
        let _guard = match self.busy.try_lock() {
            Ok(g) => g,
            // A task panicked on the caller during an earlier op; the pool itself is consistent.
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return (0..n_tasks).for_each(f),
        };
        let sh = self.shared;
        sh.panicked.store(false, Ordering::Relaxed);
        // Safety: lifetime erasure; `f` is only used by workers that joined before `Join` closed the op,
        // and `Join` waits for them (also when the caller's own tasks panic).
        let f_static: *const (dyn Fn(usize) + Sync + 'static) =
            unsafe { std::mem::transmute(f as *const (dyn Fn(usize) + Sync)) };
        // Safety: we hold `busy` and the previous op's workers are done, so nobody reads `job` now.
        unsafe {
            *sh.job.get() = Job {
                f: JobRef(f_static),
                n_tasks,
            };
        }
        sh.next.store(0, Ordering::Relaxed);
        sh.done.store(0, Ordering::Relaxed);
        let gen = sh.generation.load(Ordering::Relaxed) + 1;
        sh.entry.store((gen & 0xffff_ffff) << 32, Ordering::Release);
        sh.generation.store(gen, Ordering::SeqCst);
        for (i, t) in self.workers[..workers].iter().enumerate() {
            if sh.sleeping[i].swap(false, Ordering::SeqCst) {
                t.unpark();
            }
        }
        struct Join(&'static Shared);
        impl Drop for Join {
            fn drop(&mut self) {
                // Close the op: from now on no worker joins; wait for those that did.
                let joined = self.0.entry.fetch_or(CLOSED, Ordering::AcqRel) & COUNT;
                let mut spins = 0u32;
                while self.0.done.load(Ordering::Acquire) != joined {
                    spins += 1;
                    if spins < 1 << 14 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
        let join = Join(sh);
        loop {
            let i = sh.next.fetch_add(1, Ordering::Relaxed);
            if i >= n_tasks {
                break;
            }
            f(i);
        }
        drop(join);
        if sh.panicked.swap(false, Ordering::Relaxed) {
            panic!("a task of ThreadPool::run panicked on a worker thread");
        }
    }
}

impl crate::Kernels {
    /// The same kernels running on a pool of `n` threads (at least 1; the caller is one of them).
    /// The default is one thread per hardware thread ([`available_threads`]).
    pub fn with_threads(self, n: usize) -> crate::Kernels {
        crate::Kernels {
            pool: ThreadPool::get(n),
            ..self
        }
    }

    /// Threads the kernels' parallel ops use (including the caller).
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Runs `f(i)` for `i` in `0..n_tasks` on the persistent pool; the caller takes part; returns when all
    /// are done. See [`ThreadPool::run`].
    pub fn parallel_for(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        self.pool.run(n_tasks, f)
    }
}

fn noop(_: usize) {}

fn worker(sh: &'static Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        // 1. Wait for a new op: spin for `sh.spin`, then park until the caller unparks us.
        let start = Instant::now();
        let mut spins = 0u32;
        let gen = loop {
            let g = sh.generation.load(Ordering::Acquire);
            if g != seen {
                break g;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && start.elapsed() >= sh.spin {
                sh.sleeping[index].store(true, Ordering::SeqCst);
                // Re-check after announcing: the caller bumps `generation` before reading `sleeping`.
                if sh.generation.load(Ordering::SeqCst) == seen {
                    std::thread::park();
                }
                sh.sleeping[index].store(false, Ordering::SeqCst);
            } else {
                std::hint::spin_loop();
            }
        };
        seen = gen;
        // 2. Join the op, unless the caller has closed it (or already moved on to a later one).
        let mut e = sh.entry.load(Ordering::Acquire);
        let joined = loop {
            if e >> 32 != gen & 0xffff_ffff || e & CLOSED != 0 {
                break false;
            }
            match sh
                .entry
                .compare_exchange_weak(e, e + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break true,
                Err(now) => e = now,
            }
        };
        if !joined {
            continue;
        }
        // Safety: written before the release store of `entry` we acquired; valid until we count `done`.
        let job = unsafe { &*sh.job.get() };
        let f = unsafe { &*job.f.0 };
        let n_tasks = job.n_tasks;
        // 3. Claim tasks until none are left.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loop {
            let i = sh.next.fetch_add(1, Ordering::Relaxed);
            if i >= n_tasks {
                break;
            }
            f(i);
        }));
        if r.is_err() {
            sh.panicked.store(true, Ordering::Relaxed);
        }
        // 4. Done with the job: the caller may return (and free the closure) after this.
        sh.done.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn runs_every_task_once() {
        for threads in [1, 2, 3, 5] {
            let pool = ThreadPool::get(threads);
            for n in [0usize, 1, 2, 3, 7, 100] {
                let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
                pool.run(n, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    /// Many short ops in a row: workers joining late (or not at all) never lose or repeat a task.
    #[test]
    fn many_short_ops() {
        let pool = ThreadPool::get(2);
        let total = AtomicUsize::new(0);
        for r in 0..20_000usize {
            pool.run(2 + r % 3, &|i| {
                total.fetch_add(i + 1, Ordering::Relaxed);
            });
        }
        let want: usize = (0..20_000usize)
            .map(|r| (2 + r % 3) * (3 + r % 3) / 2)
            .sum();
        assert_eq!(total.load(Ordering::Relaxed), want);
    }

    #[test]
    fn nested_and_concurrent_calls_complete() {
        let pool = ThreadPool::get(2);
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..50 {
                        pool.run(4, &|_| {
                            pool.run(3, &|j| {
                                total.fetch_add(j + 1, Ordering::Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 3 * 50 * 4 * 6);
    }

    #[test]
    fn parks_and_wakes() {
        let pool = ThreadPool::get(2);
        let c = AtomicUsize::new(0);
        pool.run(2, &|_| {
            c.fetch_add(1, Ordering::Relaxed);
        });
        std::thread::sleep(SPIN * 3); // the worker parks
        pool.run(2, &|_| {
            c.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(c.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn worker_panic_is_reraised() {
        let pool = ThreadPool::get(3);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(64, &|i| {
                if i == 63 {
                    panic!("task 63");
                }
            })
        }));
        assert!(r.is_err());
        // The pool still works afterwards.
        let c = AtomicUsize::new(0);
        pool.run(10, &|_| {
            c.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(c.load(Ordering::Relaxed), 10);
    }
}
