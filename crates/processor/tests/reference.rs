//! Parity with transformers 5.23 (reference data from tools/reference, committed under testdata/processor):
//! decoded pictures, resized pictures and pixel_values bit for bit, tokenizer ids, rendered templates,
//! expanded input_ids, 3-D positions and rope deltas.

mod common;

use common::{diff_u8, f32_bytes, sha256_hex, Reference};
use qwen3vl_processor::{resize, Content, ImageInput, Message, Processor};
use std::collections::HashMap;

fn processor() -> Processor {
    Processor::from_dir(&common::testdata().join("checkpoint"))
        .expect("load the test processor directory")
}

#[test]
fn images_are_bit_identical() {
    let r = Reference::load();
    let p = processor();
    let mut failures = Vec::new();
    for case in r.cases["images"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let file = common::testdata()
            .join("images")
            .join(case["file"].as_str().unwrap());
        // 1. Decode (EXIF orientation, alpha over white, 16-bit rules).
        let img = p
            .load_image_file(&file)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (h, w) = (img.height() as usize, img.width() as usize);
        let want_hw: Vec<usize> = case["decoded_hw"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(vec![h, w], want_hw, "{name}: decoded size");
        if sha256_hex(img.as_raw()) != case["decoded_sha256"].as_str().unwrap() {
            let detail = if r.has(&format!("image.{name}.decoded")) {
                diff_u8(img.as_raw(), &r.u8s(&format!("image.{name}.decoded")), w)
            } else {
                "sha256 differs".into()
            };
            failures.push(format!("{name}: decoded picture: {detail}"));
            continue;
        }
        // 2. smart_resize + resize.
        let c = p.image_config().unwrap();
        let (rh, rw) = resize::smart_resize(h, w, c.factor(), c.min_pixels, c.max_pixels).unwrap();
        let resized = resize::resize_rgb(
            &qwen3vl_kernels::Kernels::detect().unwrap(),
            img.as_raw(),
            h,
            w,
            rh,
            rw,
        )
        .unwrap();
        if sha256_hex(&resized) != case["resized_sha256"].as_str().unwrap() {
            let detail = if r.has(&format!("image.{name}.resized")) {
                diff_u8(&resized, &r.u8s(&format!("image.{name}.resized")), rw)
            } else {
                "sha256 differs".into()
            };
            failures.push(format!("{name}: resized {rh}x{rw}: {detail}"));
            continue;
        }
        // 3. pixel_values and grid.
        let out = p.preprocess_image(&img).unwrap();
        let grid: Vec<usize> = r
            .i64s(&format!("image.{name}.grid_thw"))
            .iter()
            .map(|&v| v as usize)
            .collect();
        assert_eq!(out.grid_thw.to_vec(), grid, "{name}: grid_thw");
        let head = r.f32s(&format!("image.{name}.pixel_values_head"));
        let got_head = &out.pixel_values[..head.len()];
        if let Some(i) = (0..head.len()).find(|&i| got_head[i].to_bits() != head[i].to_bits()) {
            failures.push(format!(
                "{name}: pixel_values[{i}] = {} vs {}",
                got_head[i], head[i]
            ));
            continue;
        }
        if sha256_hex(&f32_bytes(&out.pixel_values))
            != case["pixel_values_sha256"].as_str().unwrap()
        {
            failures.push(format!(
                "{name}: pixel_values sha256 differs ({} values)",
                out.pixel_values.len()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} image cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn tokenizer_ids_match_with_special_tokens_as_text() {
    let r = Reference::load();
    let p = processor();
    for case in r.cases["tokenizer"].as_array().unwrap() {
        let i = case["index"].as_u64().unwrap();
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = r
            .i64s(&format!("tokenizer.{i}.ids"))
            .iter()
            .map(|&v| v as u32)
            .collect();
        let got = p
            .tokenizer()
            .encode(text, false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(got, want, "text {i}: {text:?}");
        assert_eq!(p.decode(&got).unwrap(), text, "text {i} round trip");
    }
}

fn messages(v: &serde_json::Value) -> (Vec<Message>, Vec<String>) {
    let mut images = Vec::new();
    let msgs = v
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let content = m["content"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| match c["type"].as_str().unwrap() {
                    "image" => {
                        images.push(c["image"].as_str().unwrap().to_string());
                        Content::Image
                    }
                    _ => Content::Text(c["text"].as_str().unwrap().to_string()),
                })
                .collect();
            Message::new(m["role"].as_str().unwrap(), content)
        })
        .collect();
    (msgs, images)
}

#[test]
fn prompts_render_tokenize_and_position_like_the_reference() {
    let r = Reference::load();
    let p = processor();
    let files: HashMap<String, String> = r.cases["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["file"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for case in r.cases["prompts"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        let (msgs, image_names) = messages(&case["messages"]);
        assert_eq!(
            p.render(&msgs, gen).unwrap(),
            case["rendered"].as_str().unwrap(),
            "{name}: rendered text"
        );
        let images: Vec<ImageInput> = image_names
            .iter()
            .map(|n| {
                p.preprocess_image(
                    &p.load_image_file(&common::testdata().join("images").join(&files[n]))
                        .unwrap(),
                )
                .unwrap()
            })
            .collect();
        let prompt = p.encode(&msgs, &images, gen).unwrap();
        let want_ids: Vec<u32> = r
            .i64s(&format!("prompt.{name}.input_ids"))
            .iter()
            .map(|&v| v as u32)
            .collect();
        if prompt.input_ids != want_ids {
            let at = prompt
                .input_ids
                .iter()
                .zip(&want_ids)
                .position(|(a, b)| a != b);
            panic!(
                "{name}: input_ids differ (len {} vs {}), first at {at:?}: got {:?} want {:?}",
                prompt.input_ids.len(),
                want_ids.len(),
                at.map(
                    |i| &prompt.input_ids[i.saturating_sub(2)..(i + 3).min(prompt.input_ids.len())]
                ),
                at.map(|i| &want_ids[i.saturating_sub(2)..(i + 3).min(want_ids.len())]),
            );
        }
        let pos = r.i64s(&format!("prompt.{name}.position_ids"));
        let l = want_ids.len();
        for (axis, row) in prompt.positions.iter().enumerate() {
            assert_eq!(
                row[..],
                pos[axis * l..(axis + 1) * l],
                "{name}: position ids axis {axis}"
            );
        }
        assert_eq!(
            prompt.rope_delta,
            r.i64s(&format!("prompt.{name}.rope_delta"))[0],
            "{name}: rope delta"
        );
        if r.has(&format!("prompt.{name}.image_grid_thw")) {
            let g: Vec<usize> = r
                .i64s(&format!("prompt.{name}.image_grid_thw"))
                .iter()
                .map(|&v| v as usize)
                .collect();
            let got: Vec<usize> = prompt.image_grids.iter().flatten().copied().collect();
            assert_eq!(got, g, "{name}: image grids");
        }
    }
}
