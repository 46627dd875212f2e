//! Video end to end on the tiny tied checkpoint: a prompt with a video, an image and a second video (GIF and
//! frame directory decoded here from the files) gives transformers 5.23's input_ids and, in float32, its
//! logits within the model parity tolerance (testdata/video/model_tied_video.safetensors, written by
//! tools/reference/video_cases.py). Also: the Session path generates from the same prompt.

use std::path::{Path, PathBuf};

use qwen3vl_engine::media::visual_inputs_in_prompt_order;
use qwen3vl_engine::{Engine, EngineOptions, GenerateParams, History, SamplingParams};
use qwen3vl_model::{KvCache, Logits, Precision, RunState};
use qwen3vl_processor::{Content, Message, VideoOptions};
use safetensors::SafeTensors;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

fn tensor_i64(st: &SafeTensors, k: &str) -> Vec<i64> {
    st.tensor(k)
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn tensor_f32(st: &SafeTensors, k: &str) -> Vec<f32> {
    st.tensor(k)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn video_prompt_logits_match_transformers_f32() {
    let engine = Engine::load(
        &testdata().join("model-tiny-tied"),
        &EngineOptions {
            threads: 0,
            precision: Precision::F32,
            progress: None,
            ..Default::default()
        },
    )
    .unwrap();
    let p = &engine.processor;
    let clips = testdata().join("video/clips");
    let v1 = p
        .load_video(&clips.join("gif_33x47_10f.gif"), &VideoOptions::default())
        .unwrap();
    let v2 = p
        .load_video(
            &clips.join("dir_5f"),
            &VideoOptions {
                source_fps: Some(2.0),
                max_frames: None,
            },
        )
        .unwrap();
    let img = p
        .preprocess_image(
            &p.load_image_file(&testdata().join("processor/images/rgb_20x30.png"))
                .unwrap(),
        )
        .unwrap();
    let msgs = [Message::new(
        "user",
        vec![
            Content::Video,
            Content::Image,
            Content::Video,
            Content::Text("What changes?".into()),
        ],
    )];
    let videos = [v1, v2];
    let images = [img];
    let prompt = p.encode_media(&msgs, &images, &videos, true).unwrap();

    let bytes = std::fs::read(testdata().join("video/model_tied_video.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let want_ids: Vec<u32> = tensor_i64(&st, "input_ids")
        .iter()
        .map(|&x| x as u32)
        .collect();
    assert_eq!(prompt.input_ids, want_ids, "input_ids");
    let grids: Vec<usize> = tensor_i64(&st, "video_grid_thw")
        .iter()
        .map(|&x| x as usize)
        .collect();
    assert_eq!(prompt.video_grids.concat(), grids, "video_grid_thw");

    // The one request path: tokens, positions and the vision inputs in prompt order.
    let prepared = engine
        .prepare_media(
            &msgs,
            images.to_vec(),
            videos.to_vec(),
            History::default(),
            Some(1),
            engine.context_len(),
        )
        .unwrap();
    assert_eq!(prepared.tokens, want_ids, "prepared tokens");
    assert_eq!(prepared.vision.len(), 3);
    let visual = visual_inputs_in_prompt_order(&msgs, &images, &videos);
    for (a, b) in prepared.vision.iter().zip(visual.iter()) {
        assert_eq!(a.grid_thw, b.grid_thw);
    }
    let model = &engine.model;
    let vision = model.encode_images(&prepared.vision).unwrap();
    let l = prepared.tokens.len();
    let mut cache = KvCache::new(&model.config().text, l);
    let mut state = RunState::new();
    let logits = model
        .forward(
            &prepared.tokens,
            prepared.positions.as_ref(),
            Some(&vision),
            &mut cache,
            &mut state,
            Logits::All,
        )
        .unwrap()
        .to_vec();
    let v = model.vocab_size();
    let cols: Vec<usize> = tensor_i64(&st, "logits.sample_cols")
        .iter()
        .map(|&c| c as usize)
        .collect();
    let want = tensor_f32(&st, "logits.sample");
    let (mut err, mut mag) = (0f32, 0f32);
    for i in 0..l {
        for (j, &c) in cols.iter().enumerate() {
            let (a, b) = (logits[i * v + c], want[i * cols.len() + j]);
            err = err.max((a - b).abs());
            mag = mag.max(b.abs());
        }
    }
    println!("logits: max abs difference {err} on values up to {mag}");
    // The model parity tolerance in float32 (crates/model/tests/common F32_REL_TOL).
    assert!(
        err <= 1e-4 * mag,
        "logits differ by {err} on values up to {mag}"
    );
    let top = tensor_i64(&st, "logits.top5_idx");
    let last = &logits[(l - 1) * v..l * v];
    let argmax = (0..v).fold(0, |b, i| if last[i] > last[b] { i } else { b });
    assert_eq!(argmax as i64, top[(l - 1) * 5], "last position top-1");

    // The Session path runs the same prompt.
    let mut s = engine.session(l + 4);
    let g = s
        .generate_media(
            &msgs,
            &images,
            &videos,
            &GenerateParams {
                sampling: SamplingParams::greedy(),
                max_tokens: Some(1),
                stop_strings: vec![],
                extra_eos: vec![],
            },
            &mut |_| Ok(()),
        )
        .unwrap();
    assert_eq!(g.tokens, vec![argmax as u32]);
    assert_eq!(g.stats.prefill_tokens, l);
}
