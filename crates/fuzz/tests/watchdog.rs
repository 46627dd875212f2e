//! The watchdog's clock: CPU time, so a loaded machine does not turn a slow input into a "hang", with a
//! wall-clock backstop for one that blocks.

use std::time::Duration;

use qwen3vl_fuzz::{over_limit, process_cpu_time, TIME_LIMIT, WALL_LIMIT};

#[test]
fn cpu_time_counts_work_not_waiting() {
    // Waiting (as a starved or blocked input does) uses no CPU time.
    let c0 = process_cpu_time();
    std::thread::sleep(Duration::from_millis(300));
    let slept = process_cpu_time() - c0;
    assert!(
        slept < Duration::from_millis(150),
        "{slept:?} of CPU while asleep"
    );
    // Work on another thread (as the schema compiler's) counts: 100 ms of that thread's own CPU time
    // (however long a loaded machine takes to give it that).
    let thread_cpu = || {
        let mut ts = libc_timespec();
        // Safety: `ts` is ours to fill; the clock id is a constant the OS knows.
        assert_eq!(
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) },
            0
        );
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    };
    let c0 = process_cpu_time();
    std::thread::spawn(move || {
        let mut x = 0u64;
        while thread_cpu() < Duration::from_millis(100) {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
    })
    .join()
    .unwrap();
    let spun = process_cpu_time() - c0;
    assert!(
        spun >= Duration::from_millis(100),
        "{spun:?} of CPU for 100 ms of another thread's"
    );
}

fn libc_timespec() -> libc::timespec {
    libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    }
}

#[test]
fn the_limit_passed_is_named() {
    assert_eq!(WALL_LIMIT, 6 * TIME_LIMIT);
    // Slow by the wall clock (a loaded machine) but within the CPU time: not a hang.
    assert_eq!(
        over_limit(Duration::from_secs(3), Duration::from_secs(45)),
        None
    );
    assert_eq!(over_limit(TIME_LIMIT, TIME_LIMIT), None);
    let cpu = over_limit(Duration::from_millis(10_500), Duration::from_secs(11)).unwrap();
    assert!(
        cpu.starts_with(
            "one input used more than the CPU-time limit of 10s (10.5s of CPU in 11.0s)"
        ),
        "{cpu}"
    );
    let wall = over_limit(Duration::from_millis(200), Duration::from_secs(61)).unwrap();
    assert!(
        wall.starts_with("one input ran past the wall-clock limit of 60s with only 200.0ms of CPU"),
        "{wall}"
    );
}
