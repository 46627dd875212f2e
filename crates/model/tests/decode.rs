//! Prefill followed by step-by-step decode gives the logits of one forward over the whole sequence.

mod common;

use common::*;
use qwen3vl_kernels::Kernels;
use qwen3vl_model::{
    KvCache, LoadOptions, Logits, Model, Positions, PositionsRef, Precision, RunState, VisionInput,
};

fn check(geometry: &str, case: &str) {
    let model = Model::load(
        &model_dir(geometry),
        Kernels::detect().unwrap(),
        &LoadOptions {
            precision: Precision::F32,
            progress: None,
            ..Default::default()
        },
    )
    .unwrap();
    let name = format!("{geometry}_{case}");
    let r = Reference::load(&name);
    let ims = images(&name, &r);
    let ids = r.input_ids();
    let pos = r.positions();
    let delta = r.rope_delta();
    let (l, v) = (ids.len(), model.vocab_size());
    let vis = (!ims.is_empty()).then(|| model.encode_images(&ims).unwrap());

    // One forward over everything.
    let tc = &model.config().text;
    let mut full_cache = KvCache::new(tc, l);
    let mut st = RunState::new();
    let full = model
        .forward(
            &ids,
            pos.as_ref(),
            vis.as_ref(),
            &mut full_cache,
            &mut st,
            Logits::All,
        )
        .unwrap()
        .to_vec();
    assert_eq!(full_cache.len(), l);

    // Prefill up to just after the last image token, then one token at a time.
    let img = model.config().image_token_id;
    let prefill = ids.iter().rposition(|&t| t == img).map_or(3, |p| p + 2);
    let mut cache = KvCache::new(tc, l + 4);
    let mut seq = [qwen3vl_model::Seq {
        ids: &ids[..prefill],
        positions: pos.slice(0, prefill),
        vision: vis
            .as_ref()
            .map(|features| qwen3vl_model::VisionRows { features, first: 0 }),
        cache: &mut cache,
        logits: Logits::Last,
    }];
    let last = model.forward_batch(&mut seq, &mut st).unwrap().to_vec();
    let mag = full.iter().fold(0f32, |m, x| m.max(x.abs()));
    let cmp = |got: &[f32], i: usize, what: &str| {
        let (e, at, _) = max_abs_err(got, &full[i * v..(i + 1) * v]);
        assert!(
            e <= DECODE_REL_TOL * mag,
            "{name}: {what} position {i}: max abs {e:.3e} at vocab {at} (logits up to {mag})"
        );
    };
    cmp(&last, prefill - 1, "prefill");
    for i in prefill..l {
        // The caller's decode position: cache_len + rope_delta on all three axes (spec 5.3).
        let p = cache.len() as i64 + delta;
        assert_eq!(
            [pos.rows[0][i], pos.rows[1][i], pos.rows[2][i]],
            [p, p, p],
            "{name}: decode position at {i}"
        );
        let step = model
            .forward(
                &ids[i..i + 1],
                PositionsRef::single(&p),
                None,
                &mut cache,
                &mut st,
                Logits::Last,
            )
            .unwrap();
        cmp(step, i, "decode");
    }
    assert_eq!(cache.len(), l);

    // Truncate back to the prefill and decode again: same logits (the cache rows are overwritten).
    cache.truncate(prefill);
    let p = prefill as i64 + delta;
    let again = model
        .forward(
            &ids[prefill..prefill + 1],
            PositionsRef::single(&p),
            None,
            &mut cache,
            &mut st,
            Logits::Last,
        )
        .unwrap();
    cmp(again, prefill, "after truncate");
}

#[test]
fn decode_matches_full_forward_text_tied() {
    check("tied", "text");
}

#[test]
fn decode_matches_full_forward_two_images_tied() {
    check("tied", "image2");
}

#[test]
fn decode_matches_full_forward_one_image_untied() {
    check("untied", "image1");
}

#[test]
fn cache_overflow_and_bad_inputs_are_errors() {
    let model = Model::load(
        &model_dir("untied"),
        Kernels::detect().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let pos = Positions::text(0, 3);
    let tc = &model.config().text;
    let mut st = RunState::new();
    let mut small = KvCache::new(tc, 2);
    let e = model
        .forward(
            &[1, 2, 3],
            pos.as_ref(),
            None,
            &mut small,
            &mut st,
            Logits::Last,
        )
        .unwrap_err();
    assert!(e.to_string().contains("do not fit"), "{e}");
    let mut c = KvCache::new(tc, 8);
    assert!(model
        .forward(
            &[1, 2, 999_999],
            pos.as_ref(),
            None,
            &mut c,
            &mut st,
            Logits::Last
        )
        .is_err());
    assert!(model
        .forward(&[1, 2], pos.as_ref(), None, &mut c, &mut st, Logits::Last)
        .is_err());
    assert!(model
        .forward(&[], pos.slice(0, 0), None, &mut c, &mut st, Logits::Last)
        .is_err());
    // Image tokens without matching visual rows.
    let img = model.config().image_token_id;
    let vis = qwen3vl_model::VisionOutput {
        embeds: vec![0.0; 2 * model.config().text.hidden_size],
        deepstack: vec![],
    };
    assert!(model
        .forward(
            &[img, 1, 2],
            pos.as_ref(),
            Some(&vis),
            &mut c,
            &mut st,
            Logits::Last
        )
        .is_err());
    // A cache built for another geometry.
    let mut other = tc.clone();
    other.num_hidden_layers += 1;
    let mut wrong = KvCache::new(&other, 8);
    assert!(model
        .forward(
            &[1, 2, 3],
            pos.as_ref(),
            None,
            &mut wrong,
            &mut st,
            Logits::Last
        )
        .is_err());
    // Images whose pixels disagree with their grid.
    let bad = VisionInput {
        pixel_values: vec![0.0; 1536 * 3],
        grid_thw: [1, 2, 2],
    };
    assert!(model.encode_images(&[bad]).is_err());
    let odd = VisionInput {
        pixel_values: vec![0.0; 1536 * 3],
        grid_thw: [1, 1, 3],
    };
    assert!(model.encode_images(&[odd]).is_err());
}

/// Greedy decoding (prefill, then argmax token by token at cache_len + rope_delta) reproduces
/// transformers' `generate(do_sample=False)` ids of every reference case.
#[test]
fn greedy_decode_matches_transformers_generate() {
    let cases = cases();
    for geometry in ["tied", "untied"] {
        let model = Model::load(
            &model_dir(geometry),
            Kernels::detect().unwrap(),
            &LoadOptions {
                precision: Precision::F32,
                progress: None,
                ..Default::default()
            },
        )
        .unwrap();
        let gen: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(model_dir(geometry).join("generation_config.json")).unwrap(),
        )
        .unwrap();
        let eos: Vec<u32> = gen["eos_token_id"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        for case in ["text", "image1", "image2"] {
            let name = format!("{geometry}_{case}");
            let want: Vec<u32> = cases["cases"][&name]["greedy_new_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let r = Reference::load(&name);
            let ims = images(&name, &r);
            let ids = r.input_ids();
            let delta = r.rope_delta();
            let vis = (!ims.is_empty()).then(|| model.encode_images(&ims).unwrap());
            let mut cache = KvCache::new(&model.config().text, ids.len() + want.len());
            let mut st = RunState::new();
            let mut logits = model
                .forward(
                    &ids,
                    r.positions().as_ref(),
                    vis.as_ref(),
                    &mut cache,
                    &mut st,
                    Logits::Last,
                )
                .unwrap()
                .to_vec();
            let mut got = Vec::new();
            while got.len() < want.len() {
                let next = argmax(&logits) as u32;
                got.push(next);
                if eos.contains(&next) || got.len() == want.len() {
                    break;
                }
                let p = cache.len() as i64 + delta;
                logits = model
                    .forward(
                        &[next],
                        PositionsRef::single(&p),
                        None,
                        &mut cache,
                        &mut st,
                        Logits::Last,
                    )
                    .unwrap()
                    .to_vec();
            }
            assert_eq!(got, want, "{name}: greedy ids");
        }
    }
}
