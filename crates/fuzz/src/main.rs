//! `qwen3vl-fuzz TARGET [--minutes N] [--seed S]`: mutate TARGET's seeds for N minutes (default 10), after
//! replaying its saved regression inputs. `qwen3vl-fuzz list` names the targets; `all` runs each in turn.

use std::process::ExitCode;
use std::time::Duration;

use qwen3vl_fuzz::{fuzz, replay, targets};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut minutes = 10.0f64;
    let mut seed = 1u64;
    let mut names = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--minutes" => match it.next().and_then(|v| v.parse().ok()) {
                Some(m) if m > 0.0 => minutes = m,
                _ => return usage("--minutes needs a positive number"),
            },
            "--seed" => match it.next().and_then(|v| v.parse().ok()) {
                Some(s) => seed = s,
                None => return usage("--seed needs a non-negative integer"),
            },
            "list" => {
                for t in targets::TARGETS {
                    println!("{}", t.name);
                }
                return ExitCode::SUCCESS;
            }
            "all" => names.extend(targets::TARGETS.iter().map(|t| t.name.to_string())),
            n => names.push(n.to_string()),
        }
    }
    if names.is_empty() {
        return usage("name a target (or `all`, or `list`)");
    }
    for name in names {
        let Some(t) = targets::by_name(&name) else {
            return usage(&format!("unknown target {name:?}"));
        };
        let replayed = match replay(t) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let dl = Duration::from_secs_f64(minutes * 60.0);
        match fuzz(t, seed, u64::MAX, dl) {
            Ok(s) => println!(
                "{name}: {} inputs in {minutes} min ({} accepted, {} refused), {replayed} regression inputs replayed; slowest input {:.1} ms, peak allocation {:.1} MiB; no panic, hang or over-budget allocation",
                s.inputs,
                s.ok,
                s.refused,
                s.max_input_ms,
                s.max_alloc as f64 / (1 << 20) as f64
            ),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("error: {msg} (usage: qwen3vl-fuzz TARGET|all|list [--minutes N] [--seed S])");
    ExitCode::from(2)
}
