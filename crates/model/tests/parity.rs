//! Stage-by-stage parity with transformers 5.23 (float32 on the bf16 weights) on the tiny checkpoints of
//! testdata/model-tiny-*: every named activation is compared and the first diverging module is named.

mod common;

use common::*;
use qwen3vl_kernels::Kernels;
use qwen3vl_model::{Hooks, KvCache, LoadOptions, Logits, Model, Precision, RunState, TraceMap};

const CASES: [&str; 3] = ["text", "image1", "image2"];

struct StageResult {
    name: String,
    max_err: f32,
    rel: f32,
    cos: f64,
}

/// Runs one case; returns the per-stage comparison (in forward order), top-1 matches, near-ties, positions.
fn run_case(model: &Model, geometry: &str, case: &str) -> (Vec<StageResult>, usize, usize, usize) {
    let r = Reference::load(&format!("{geometry}_{case}"));
    let ims = images(&format!("{geometry}_{case}"), &r);
    let ids = r.input_ids();
    let pos = r.positions();
    let mut tr = TraceMap::default();
    let vis = if ims.is_empty() {
        None
    } else {
        Some(
            model
                .encode_images_with(&ims, Hooks::trace(&mut tr))
                .expect("vision"),
        )
    };
    let mut cache = KvCache::new(&model.config().text, ids.len());
    let mut st = RunState::new();
    let logits = model
        .forward_with(
            &ids,
            pos.as_ref(),
            vis.as_ref(),
            &mut cache,
            &mut st,
            Logits::All,
            Hooks::trace(&mut tr),
        )
        .expect("forward");
    let v = model.vocab_size();
    let l = ids.len();
    assert_eq!(logits.len(), l * v);

    let mut out = Vec::new();
    for name in &tr.order {
        if name == "logits" {
            continue;
        }
        let (shape, ours) = &tr.stages[name];
        let rt = r.get(name);
        assert_eq!(&rt.shape, shape, "{geometry}_{case}: {name}: shape");
        let (e, _, mag) = max_abs_err(ours, &rt.f32);
        out.push(StageResult {
            name: name.clone(),
            max_err: e,
            rel: e / mag.max(1e-30),
            cos: cosine(ours, &rt.f32),
        });
    }
    // Every reference stage was produced.
    for k in r.tensors.keys() {
        let is_stage = k.starts_with("visual.") || k.starts_with("language_model.");
        assert!(
            !is_stage || tr.stages.contains_key(k),
            "{geometry}_{case}: stage {k} not traced"
        );
    }
    // logits at the sampled columns.
    let ours = r.sampled_logits(logits, l, v);
    let rs = &r.get("logits.sample").f32;
    let (e, _, mag) = max_abs_err(&ours, rs);
    out.push(StageResult {
        name: "logits".into(),
        max_err: e,
        rel: e / mag.max(1e-30),
        cos: cosine(&ours, rs),
    });
    // top-1 per position.
    // A position agrees if our top-1 is the reference's, or (Fast only, counted separately) a near-tie: a token
    // of the reference's top 5 scored within FAST_TIE_REL of its top-1 (random tiny models have such ties;
    // no bf16 path can order them as fp32 does).
    let top5 = &r.get("logits.top5_idx").i64;
    let top5v = &r.get("logits.top5_val").f32;
    let (mut hits, mut ties) = (0, 0);
    for i in 0..l {
        let ours = argmax(&logits[i * v..(i + 1) * v]);
        if ours == top5[i * 5] as usize {
            hits += 1;
        } else if let Some(j) = (0..5).find(|&j| top5[i * 5 + j] as usize == ours) {
            let gap = top5v[i * 5] - top5v[i * 5 + j];
            println!(
                "  position {i}: top-1 {ours} vs reference {} (reference gap {gap:.3e})",
                top5[i * 5]
            );
            if gap <= FAST_TIE_REL * top5v[i * 5].abs() {
                ties += 1;
            }
        }
    }
    (out, hits, ties, l)
}

fn check(geometry: &str, precision: Precision) {
    check_with(geometry, precision, Kernels::detect().expect("kernels"));
}

fn check_with(geometry: &str, precision: Precision, k: Kernels) {
    let model = Model::load(
        &model_dir(geometry),
        k,
        &LoadOptions {
            precision,
            progress: None,
            ..Default::default()
        },
    )
    .expect("load");
    let (mut hits, mut ties, mut total) = (0, 0, 0);
    let mut failures = Vec::new();
    for case in CASES {
        let (stages, h, ti, t) = run_case(&model, geometry, case);
        hits += h;
        ties += ti;
        total += t;
        println!("{geometry}_{case} ({precision:?}, {:?}):", k.isa());
        println!(
            "  {:<40} {:>11} {:>11} {:>12}",
            "stage", "max_abs", "rel", "cosine"
        );
        let mut first_bad: Option<String> = None;
        for s in &stages {
            println!(
                "  {:<40} {:>11.3e} {:>11.3e} {:>12.9}",
                s.name, s.max_err, s.rel, s.cos
            );
            let bad = match precision {
                Precision::F32 => s.rel.is_nan() || s.rel > F32_REL_TOL,
                Precision::Fast => s.cos.is_nan() || s.cos < FAST_MIN_COSINE,
            };
            if bad && first_bad.is_none() {
                first_bad = Some(format!(
                    "{geometry}_{case}: first diverging stage {} (max abs {:.3e}, rel {:.3e}, cosine {:.9})",
                    s.name, s.max_err, s.rel, s.cos
                ));
            }
        }
        println!("  top-1 agreement {h}/{t} (+{ti} near-ties)");
        if precision == Precision::F32 && h != t {
            failures.push(format!(
                "{geometry}_{case}: top-1 differs at {} of {t} positions",
                t - h
            ));
        }
        failures.extend(first_bad);
    }
    let frac = (hits + ties) as f64 / total as f64;
    println!("{geometry} ({precision:?}): top-1 agreement {hits}/{total}, {ties} near-ties");
    if precision == Precision::Fast && frac < FAST_MIN_TOP1 {
        failures.push(format!(
            "{geometry}: top-1 agreement ({hits} + {ties} near-ties)/{total} < {FAST_MIN_TOP1}"
        ));
    }
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn parity_f32_tied() {
    check("tied", Precision::F32);
}

#[test]
fn parity_f32_untied() {
    check("untied", Precision::F32);
}

/// Every SIMD level this CPU has (scalar included) meets the F32 tolerance.
#[test]
fn parity_f32_every_isa_level() {
    for k in Kernels::all_available() {
        check_with("tied", Precision::F32, k);
        check_with("untied", Precision::F32, k);
    }
}

/// `Fast` meets its tolerance with the bf16 dot product on and off where the CPU has it (which one a
/// machine uses by default is its probe's choice), and at every other level.
#[test]
fn parity_fast_every_variant() {
    for k in Kernels::test_variants() {
        check_with("tied", Precision::Fast, k);
    }
}

#[test]
fn parity_fast_tied() {
    check("tied", Precision::Fast);
}

#[test]
fn parity_fast_untied() {
    check("untied", Precision::Fast);
}

/// `forward_top_k` (the `logits` command's path) gives the reference's top-5 logits per position.
#[test]
fn forward_top_k_matches_reference_f32() {
    let k = Kernels::detect().expect("kernels");
    for geometry in ["tied", "untied"] {
        let model = Model::load(
            &model_dir(geometry),
            k,
            &LoadOptions {
                precision: Precision::F32,
                progress: None,
                ..Default::default()
            },
        )
        .unwrap();
        for case in CASES {
            let name = format!("{geometry}_{case}");
            let r = Reference::load(&name);
            let ims = images(&name, &r);
            let ids = r.input_ids();
            let vis = (!ims.is_empty()).then(|| model.encode_images(&ims).unwrap());
            let mut cache = KvCache::new(&model.config().text, ids.len());
            let t = model
                .forward_top_k(
                    &ids,
                    r.positions().as_ref(),
                    vis.as_ref(),
                    &mut cache,
                    &mut RunState::new(),
                    5,
                )
                .unwrap();
            assert_eq!(t.idx.len(), ids.len() * 5);
            assert_eq!(t.last.len(), model.vocab_size());
            let (ri, rv) = (&r.get("logits.top5_idx").i64, &r.get("logits.top5_val").f32);
            let mag = rv.iter().fold(0f32, |m, x| m.max(x.abs()));
            for i in 0..ids.len() {
                assert_eq!(t.idx[i * 5] as i64, ri[i * 5], "{name}: top-1 at {i}");
                for j in 0..5 {
                    let e = (t.val[i * 5 + j] - rv[i * 5 + j]).abs();
                    assert!(
                        e <= F32_REL_TOL * mag,
                        "{name}: top-5 value {j} at {i}: error {e}"
                    );
                }
            }
            let l = ids.len() - 1;
            assert_eq!(argmax(&t.last) as u32, t.idx[l * 5], "{name}: last row");
        }
    }
}

#[test]
fn top_k_orders_and_skips_nan() {
    let x = [1.0, f32::NAN, 3.0, 2.0, 3.0, -1.0];
    assert_eq!(
        qwen3vl_model::top_k(&x, 3),
        vec![(2, 3.0), (4, 3.0), (3, 2.0)]
    );
    assert_eq!(qwen3vl_model::top_k(&x, 0), vec![]);
    assert_eq!(qwen3vl_model::top_k(&x[..2], 5), vec![(0, 1.0)]);
}
