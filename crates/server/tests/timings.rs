//! The `timings` extension: the wait for a slot is `queue_ms`, not part of `prompt_ms`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn queue_wait_is_reported_apart_from_prompt_time() {
    let mut o = opts();
    o.parallel = 1;
    o.queue = 1;
    let s = start(o);
    let addr = s.addr();
    // Alone: hardly any wait.
    let alone = chat(
        addr,
        &json!({"messages": user("alone"), "max_tokens": 2, "temperature": 0}),
    )
    .json();
    let t = &alone["timings"];
    assert!(t["queue_ms"].as_f64().unwrap() >= 0.0, "{alone}");
    assert!(t["prompt_ms"].as_f64().unwrap() > 0.0, "{alone}");

    // Behind a long answer in the only slot: waits in the queue until that one is gone.
    let a = open_stream(addr, &long_stream());
    let b = std::thread::spawn(move || {
        chat(
            addr,
            &json!({"messages": user("queued"), "max_tokens": 2, "temperature": 0}),
        )
    });
    let t = Instant::now();
    while metric(addr, "qwen3vl_queue_depth") < 1.0 {
        assert!(t.elapsed() < Duration::from_secs(10), "never queued");
        std::thread::sleep(Duration::from_millis(5));
    }
    let queued_at = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    // Still running and still queued: the request waited at least this long.
    assert_eq!(metric(addr, "qwen3vl_sequences_running"), 1.0);
    assert_eq!(metric(addr, "qwen3vl_queue_depth"), 1.0);
    let waited_ms = queued_at.elapsed().as_secs_f64() * 1e3;
    drop(a);
    let r = b.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let (queue, prompt) = (
        v["timings"]["queue_ms"].as_f64().unwrap(),
        v["timings"]["prompt_ms"].as_f64().unwrap(),
    );
    assert!(queue >= waited_ms, "queue_ms {queue} < {waited_ms} waited");
    // The prompt of a few tokens on the tiny model takes far less than the wait it no longer includes.
    assert!(
        prompt > 0.0 && prompt < queue,
        "prompt_ms {prompt}, queue_ms {queue}"
    );
    let rate = v["timings"]["prompt_per_second"].as_f64().unwrap();
    let n = v["timings"]["prompt_n"].as_f64().unwrap();
    assert!(
        (rate - n / (prompt / 1e3)).abs() <= 1e-6 * rate.max(1.0),
        "{v}"
    );
    s.shutdown().unwrap();
}
