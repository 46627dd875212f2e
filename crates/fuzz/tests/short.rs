//! A short deterministic run of every fuzz target (together under a minute: 50 s shared among them) and a
//! replay of every saved regression input: no panic, hang or over-budget allocation.

use std::time::Duration;

use qwen3vl_fuzz::{fuzz, replay, targets};

#[test]
fn every_target_survives_a_short_run() {
    let mut report = Vec::new();
    let each = Duration::from_secs(50) / targets::TARGETS.len() as u32;
    for t in targets::TARGETS {
        let replayed = replay(t).unwrap_or_else(|e| panic!("{e}"));
        let s = fuzz(t, 7, 3000, each).unwrap_or_else(|e| panic!("{e}"));
        assert!(s.inputs >= 20, "{}: only {} inputs ran", t.name, s.inputs);
        assert!(s.ok > 0, "{}: not even the seeds were accepted", t.name);
        assert!(s.refused > 0, "{}: no mutant was refused", t.name);
        report.push(format!(
            "{}: {} inputs, {} accepted, {replayed} replayed",
            t.name, s.inputs, s.ok
        ));
    }
    eprintln!("{}", report.join("\n"));
}
