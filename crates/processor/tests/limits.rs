//! Sizes, counts and loops driven by checkpoint files are bounded by the engine's own limits
//! (`qwen3vl_processor::limits`), and each refusal names the file, the field and the limit.

mod common;

use qwen3vl_processor::{limits, Content, ImageConfig, Message, Processor, ProcessorError};
use std::path::{Path, PathBuf};
use std::time::Instant;

const GOOD: &str = r#"{"image_mean":[0.5,0.5,0.5],"image_std":[0.5,0.5,0.5],"merge_size":2,"patch_size":16,
  "rescale_factor":0.00392156862745098,"size":{"longest_edge":16777216,"shortest_edge":65536},
  "temporal_patch_size":2}"#;

fn with(field: &str, value: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
    let x: serde_json::Value = serde_json::from_str(value).unwrap();
    match field.split_once('.') {
        Some((a, b)) => v[a][b] = x,
        None => v[field] = x,
    }
    v.to_string()
}

fn config_err(text: &str) -> String {
    match ImageConfig::from_json(text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn preprocessor_sizes_are_bounded_before_use() {
    assert!(ImageConfig::from_json(GOOD).is_ok());
    // The pixel budget of a resized image (1e15 made a 300x200 image allocate the machine's memory).
    let e = config_err(&with("size.longest_edge", "1000000000000000"));
    assert!(
        e.contains("size.longest_edge") && e.contains(&limits::MAX_RESIZED_PIXELS.to_string()),
        "{e}"
    );
    let e = config_err(&with("size.shortest_edge", "1000000000000000"));
    assert!(e.contains("size.shortest_edge"), "{e}");
    // patch_size 2^40 aborted on allocation; 2^62 overflowed patch × merge.
    for p in ["1099511627776", "4611686018427387904"] {
        let e = config_err(&with("patch_size", p));
        assert!(
            e.contains("patch_size") && e.contains(&limits::MAX_PATCH_SIZE.to_string()),
            "{e}"
        );
    }
    let e = config_err(&with("temporal_patch_size", "1000"));
    assert!(e.contains("temporal_patch_size"), "{e}");
    let e = config_err(&with("merge_size", "1000"));
    assert!(e.contains("merge_size"), "{e}");
    // Every error is one line naming the file.
    assert!(
        e.starts_with("preprocessor_config.json: ") && !e.contains('\n'),
        "{e}"
    );
}

#[test]
fn non_numeric_mean_and_std_entries_are_refused_not_dropped() {
    let e = config_err(&with("image_mean", r#"[0.5, "x", 0.5, 0.5]"#));
    assert!(
        e.contains("image_mean") && e.contains("3 finite numbers"),
        "{e}"
    );
    let e = config_err(&with("image_std", r#"[0.5, null, 0.5]"#));
    assert!(e.contains("image_std"), "{e}");
    let e = config_err(&with("rescale_factor", r#""0.1""#));
    assert!(e.contains("rescale_factor"), "{e}");
    let e = config_err("[]");
    assert!(e.contains("object"), "{e}");
}

/// A copy of the processor test checkpoint in a fresh directory, `edit` applied to it.
fn checkpoint(name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let src = common::testdata().join("checkpoint");
    let dir = std::env::temp_dir().join(format!("qwen3vl-limits-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "config.json",
        "preprocessor_config.json",
        "chat_template.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(
        common::testdata().join("../tokenizer/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    edit(&dir);
    dir
}

fn load_err(dir: &Path) -> String {
    let r = Processor::from_dir(dir);
    let _ = std::fs::remove_dir_all(dir);
    match r {
        Ok(_) => panic!("expected {} to be refused", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn preprocessor_and_vision_config_must_agree_at_load() {
    for (field, value) in [("patch_size", 14), ("temporal_patch_size", 3)] {
        let dir = checkpoint(field, |d| {
            let p = d.join("config.json");
            let mut v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            v["vision_config"][field] = value.into();
            std::fs::write(&p, v.to_string()).unwrap();
        });
        let e = load_err(&dir);
        assert!(
            e.contains(&format!("vision_config.{field} {value}"))
                && e.contains(&format!("preprocessor_config.json {field}")),
            "{e}"
        );
    }
}

#[test]
fn an_empty_tokenizer_vocabulary_is_refused() {
    let dir = checkpoint("emptyvocab", |d| {
        std::fs::write(
            d.join("tokenizer.json"),
            r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
               "pre_tokenizer":null,"post_processor":null,"decoder":null,
               "model":{"type":"WordLevel","vocab":{},"unk_token":"<unk>"}}"#,
        )
        .unwrap();
    });
    let e = load_err(&dir);
    assert!(
        e.contains("tokenizer.json") && e.contains("vocabulary is empty"),
        "{e}"
    );
}

fn template_dir(name: &str, template: &str) -> PathBuf {
    let t = template.to_string();
    checkpoint(name, move |d| {
        std::fs::write(d.join("chat_template.jinja"), t).unwrap();
    })
}

#[test]
fn a_looping_template_stops_on_its_budget() {
    let dir = template_dir(
        "loop",
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    );
    let p = Processor::from_dir(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let t = Instant::now();
    let e = p
        .encode(&[Message::text("user", "hi")], &[], true)
        .unwrap_err()
        .to_string();
    let secs = t.elapsed().as_secs_f64();
    assert!(
        e.contains("chat_template.jinja") && e.contains("budget") && e.contains("TEMPLATE_FUEL"),
        "{e}"
    );
    assert!(secs < 10.0, "the budget took {secs:.1} s to run out");
}

#[test]
fn a_template_rendering_nothing_is_named() {
    let dir = template_dir("empty", "{# nothing #}");
    let p = Processor::from_dir(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let e = p
        .encode(
            &[Message::new("user", vec![Content::Text("hi".into())])],
            &[],
            true,
        )
        .unwrap_err();
    assert!(matches!(e, ProcessorError::Template(_)), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("chat_template.jinja") && e.contains("rendered no tokens"),
        "{e}"
    );
}

#[test]
fn oversized_files_are_refused_before_reading() {
    let dir = checkpoint("bigtemplate", |d| {
        let f = std::fs::File::create(d.join("chat_template.jinja")).unwrap();
        f.set_len(limits::MAX_CONFIG_BYTES + 1).unwrap();
    });
    let e = load_err(&dir);
    assert!(
        e.contains("chat_template.jinja") && e.contains(&limits::MAX_CONFIG_BYTES.to_string()),
        "{e}"
    );
}

/// A CMYK JPEG (PIL wrote it; Adobe-inverted like Photoshop's) decodes to the RGB that Pillow's current
/// `convert("RGB")` gives: the expected bytes were computed from PIL's decoded CMYK values with
/// Pillow's `cmyk2rgb` (testdata/processor/cmyk).
#[test]
fn cmyk_jpeg_decodes_like_pil() {
    let dir = common::testdata().join("cmyk");
    let bytes = std::fs::read(dir.join("cmyk_21x13.jpg")).unwrap();
    let want = std::fs::read(dir.join("cmyk_21x13.rgb")).unwrap();
    let img = qwen3vl_processor::decode_rgb(&bytes, &Default::default()).unwrap();
    assert_eq!((img.width(), img.height()), (21, 13));
    assert_eq!(img.as_raw().len(), want.len());
    let diff = img
        .as_raw()
        .iter()
        .zip(&want)
        .map(|(&a, &b)| (a as i32 - b as i32).abs())
        .max()
        .unwrap();
    assert_eq!(diff, 0, "max difference {diff} from PIL's RGB");
}
