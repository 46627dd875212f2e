//! Damaged checkpoints are errors naming the file/tensor, never panics (RELIABILITY 1–2); dtypes, sharding
//! and tying load correctly.

mod common;

use std::path::{Path, PathBuf};

use qwen3vl_kernels::Kernels;
use qwen3vl_model::weights::{write_safetensors, Dtype, OutTensor, SafetensorsFile};
use qwen3vl_model::{
    KvCache, LoadOptions, Logits, Model, ModelError, Positions, Precision, RunState,
};
use safetensors::SafeTensors;

fn tmp(name: &str) -> PathBuf {
    // Under the target's temp dir with a fixed name per case: a rerun replaces it, nothing piles up in /tmp.
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("model-weights-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A raw file: 8-byte header length `n`, header text, then `data_len` bytes.
fn raw(path: &Path, n: u64, header: &str, data_len: usize) {
    let mut b = n.to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend(std::iter::repeat_n(0u8, data_len));
    std::fs::write(path, b).unwrap();
}

/// A file with `header` (JSON) and `data_len` data bytes.
fn with_header(name: &str, header: &str, data_len: usize) -> Result<SafetensorsFile, ModelError> {
    let d = tmp(name);
    let p = d.join("model.safetensors");
    raw(&p, header.len() as u64, header, data_len);
    SafetensorsFile::open(&p)
}

fn expect_err_naming(r: Result<SafetensorsFile, ModelError>, tensor: Option<&str>, words: &str) {
    match r {
        Ok(_) => panic!("accepted a damaged file (expected: {words})"),
        Err(e) => {
            let s = e.to_string();
            if let Some(t) = tensor {
                assert!(
                    s.contains(&format!("tensor {t}")),
                    "error does not name {t}: {s}"
                );
            }
            assert!(s.contains(words), "error {s:?} does not say {words:?}");
        }
    }
}

const A: &str = r#""a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#;

#[test]
fn valid_tiny_file_opens() {
    let h = format!(r#"{{{A},"b":{{"dtype":"BF16","shape":[2,2],"data_offsets":[8,16]}}}}"#);
    let f = with_header("valid", &h, 16).unwrap();
    assert_eq!(f.keys().count(), 2);
}

#[test]
fn overlapping_offsets() {
    let h = format!(r#"{{{A},"b":{{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}}}"#);
    expect_err_naming(with_header("overlap", &h, 12), Some("b"), "overlaps");
}

#[test]
fn gap_between_tensors() {
    let h = format!(r#"{{{A},"b":{{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}}}"#);
    expect_err_naming(with_header("gap", &h, 20), Some("b"), "gap");
}

#[test]
fn offsets_past_the_end() {
    let h = format!(r#"{{{A},"b":{{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}}}"#);
    expect_err_naming(with_header("past-end", &h, 12), Some("b"), "past the end");
}

#[test]
fn shape_times_dtype_overflow() {
    let h = r#"{"a":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,8]}}"#;
    expect_err_naming(with_header("overflow", h, 8), Some("a"), "overflows");
    let h = r#"{"a":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,8]}}"#;
    expect_err_naming(with_header("overflow2", h, 8), Some("a"), "overflows");
}

#[test]
fn shape_disagrees_with_byte_range() {
    let h = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
    expect_err_naming(with_header("size", h, 8), Some("a"), "needs 12");
}

#[test]
fn trailing_bytes() {
    let h = format!(r#"{{{A}}}"#);
    expect_err_naming(with_header("trailing", &h, 11), Some("a"), "trailing");
}

#[test]
fn header_over_100mb_rejected_before_reading() {
    let d = tmp("huge-header");
    let p = d.join("model.safetensors");
    // Claims a 200 MB header in a 20-byte file; also a header just over the limit in a file that is big
    // enough (sparse) — both refused without reading the header.
    raw(&p, 200_000_000, "{}", 10);
    expect_err_naming(SafetensorsFile::open(&p), None, "exceeds");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(100_000_100).unwrap();
    drop(f);
    let mut b = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    use std::io::Write;
    b.write_all(&100_000_001u64.to_le_bytes()).unwrap();
    drop(b);
    expect_err_naming(SafetensorsFile::open(&p), None, "exceeds");
}

#[test]
fn header_longer_than_file() {
    let d = tmp("long-header");
    let p = d.join("model.safetensors");
    raw(&p, 1000, "{}", 10);
    expect_err_naming(SafetensorsFile::open(&p), None, "runs past the end");
    raw(&p, 0, "", 0);
    std::fs::write(&p, [1u8, 2, 3]).unwrap();
    expect_err_naming(SafetensorsFile::open(&p), None, "truncated");
}

#[test]
fn bad_header_json_and_fields() {
    expect_err_naming(with_header("json", "{\"a\":", 0), None, "not valid JSON");
    expect_err_naming(with_header("arr", "[1,2]", 0), None, "not a JSON object");
    let h = r#"{"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}}"#;
    expect_err_naming(with_header("dtype", h, 8), Some("a"), "unknown dtype");
    let h = r#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#;
    expect_err_naming(with_header("neg", h, 8), Some("a"), "shape");
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#;
    expect_err_naming(with_header("rev", h, 8), Some("a"), "reversed");
}

// ---- whole checkpoints ----

/// The tensors of a tiny checkpoint as (name, dtype, shape, bytes).
fn tensors_of(geometry: &str) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(common::model_dir(geometry).join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(k, t)| {
            assert_eq!(t.dtype(), safetensors::Dtype::BF16);
            (
                k.to_string(),
                Dtype::BF16,
                t.shape().to_vec(),
                t.data().to_vec(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// A checkpoint dir with the geometry's config (optionally edited) and the given tensors in one file.
fn checkpoint(
    name: &str,
    geometry: &str,
    tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)],
    edit: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let d = tmp(name);
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::model_dir(geometry).join("config.json")).unwrap(),
    )
    .unwrap();
    edit(&mut cfg);
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    let out: Vec<OutTensor> = tensors
        .iter()
        .map(|(n, dt, s, b)| OutTensor::borrowed(n, *dt, s, b))
        .collect();
    write_safetensors(&d.join("model.safetensors"), &out).unwrap();
    d
}

fn load(dir: &Path) -> Result<Model, ModelError> {
    Model::load(
        dir,
        Kernels::detect().unwrap(),
        &LoadOptions {
            precision: Precision::F32,
            progress: None,
            ..Default::default()
        },
    )
}

/// Last-position logits of a short text prompt.
fn logits(m: &Model) -> Vec<f32> {
    let ids = [151644u32, 872, 198, 9707, 151645, 198, 151644, 77091, 198];
    let p = Positions::text(0, ids.len());
    let mut c = KvCache::new(&m.config().text, 16);
    let mut st = RunState::new();
    m.forward(&ids, p.as_ref(), None, &mut c, &mut st, Logits::Last)
        .unwrap()
        .to_vec()
}

fn expect_model_err(r: Result<Model, ModelError>, words: &[&str]) {
    match r {
        Ok(_) => panic!("loaded a bad checkpoint (expected {words:?})"),
        Err(e) => {
            let s = e.to_string();
            for w in words {
                assert!(s.contains(w), "error {s:?} does not mention {w:?}");
            }
        }
    }
}

#[test]
fn truncated_checkpoint_names_the_cut_tensor() {
    let src = common::model_dir("tied").join("model.safetensors");
    let d = tmp("truncated");
    std::fs::copy(
        common::model_dir("tied").join("config.json"),
        d.join("config.json"),
    )
    .unwrap();
    let b = std::fs::read(&src).unwrap();
    std::fs::write(d.join("model.safetensors"), &b[..b.len() * 2 / 3]).unwrap();
    expect_model_err(load(&d), &["tensor ", "past the end"]);
}

#[test]
fn missing_tensor_is_named() {
    let mut t = tensors_of("untied");
    let key = "model.language_model.layers.1.mlp.gate_proj.weight";
    t.retain(|x| x.0 != key);
    let d = checkpoint("missing", "untied", &t, |_| {});
    expect_model_err(load(&d), &[key]);
    let mut t = tensors_of("untied");
    t.retain(|x| x.0 != "lm_head.weight");
    let d = checkpoint("no-lm-head", "untied", &t, |_| {});
    expect_model_err(load(&d), &["lm_head.weight", "tie_word_embeddings"]);
}

#[test]
fn shape_mismatch_is_named() {
    let mut t = tensors_of("tied");
    let key = "model.visual.blocks.1.attn.qkv.weight";
    let e = t.iter_mut().find(|x| x.0 == key).unwrap();
    e.2 = vec![e.2[1], e.2[0]];
    let d = checkpoint("shape", "tied", &t, |_| {});
    expect_model_err(load(&d), &[key, "shape"]);
}

#[test]
fn head_dim_times_heads_mismatch_with_weights() {
    // head_dim 8 (sections [2,1,1]) is a valid config by itself, but q_proj holds 6 heads × 16.
    let t = tensors_of("tied");
    let d = checkpoint("head-dim", "tied", &t, |c| {
        c["text_config"]["head_dim"] = 8.into();
        c["text_config"]["rope_scaling"]["mrope_section"] = serde_json::json!([2, 1, 1]);
    });
    expect_model_err(
        load(&d),
        &[
            "model.language_model.layers.0.self_attn.q_proj.weight",
            "[48, 8]",
        ],
    );
}

#[test]
fn f32_checkpoint_gives_identical_logits_and_f16_loads() {
    let base = logits(&load(&common::model_dir("untied")).unwrap());
    let widen = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
            .collect()
    };
    let t32: Vec<_> = tensors_of("untied")
        .into_iter()
        .map(|(n, _, s, b)| {
            let v: Vec<u8> = widen(&b).iter().flat_map(|x| x.to_le_bytes()).collect();
            (n, Dtype::F32, s, v)
        })
        .collect();
    let d = checkpoint("f32", "untied", &t32, |_| {});
    assert_eq!(
        logits(&load(&d).unwrap()),
        base,
        "f32 weights with the same values"
    );

    let t16: Vec<_> = tensors_of("untied")
        .into_iter()
        .map(|(n, _, s, b)| {
            let v: Vec<u8> = widen(&b)
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_bits().to_le_bytes())
                .collect();
            (n, Dtype::F16, s, v)
        })
        .collect();
    let d = checkpoint("f16", "untied", &t16, |_| {});
    let l16 = logits(&load(&d).unwrap());
    let (e, _, mag) = common::max_abs_err(&l16, &base);
    assert!(
        e < 0.05 * mag,
        "f16 weights: max abs {e} on logits up to {mag}"
    );
}

#[test]
fn sharded_checkpoint_matches_single_file() {
    let base = logits(&load(&common::model_dir("tied")).unwrap());
    let t = tensors_of("tied");
    let d = tmp("sharded");
    std::fs::copy(
        common::model_dir("tied").join("config.json"),
        d.join("config.json"),
    )
    .unwrap();
    let half_at = t.len() / 2;
    let mut map = serde_json::Map::new();
    for (i, part) in [&t[..half_at], &t[half_at..]].iter().enumerate() {
        let name = format!("model-0000{}-of-00002.safetensors", i + 1);
        let out: Vec<OutTensor> = part
            .iter()
            .map(|(n, dt, s, b)| OutTensor::borrowed(n, *dt, s, b))
            .collect();
        write_safetensors(&d.join(&name), &out).unwrap();
        for (n, ..) in part.iter() {
            map.insert(n.clone(), name.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map.clone()});
    std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).unwrap();
    assert_eq!(logits(&load(&d).unwrap()), base);

    // An index naming the wrong shard for a key, and one naming a missing shard.
    let key = t[0].0.clone();
    let mut bad = map.clone();
    bad.insert(key.clone(), "model-00002-of-00002.safetensors".into());
    std::fs::write(
        d.join("model.safetensors.index.json"),
        serde_json::json!({"weight_map": bad}).to_string(),
    )
    .unwrap();
    expect_model_err(load(&d), &[&key]);
    let mut bad = map;
    bad.insert(key, "model-00003-of-00002.safetensors".into());
    std::fs::write(
        d.join("model.safetensors.index.json"),
        serde_json::json!({"weight_map": bad}).to_string(),
    )
    .unwrap();
    expect_model_err(load(&d), &["model-00003-of-00002.safetensors"]);
}

#[test]
fn tied_checkpoint_has_no_lm_head_and_uses_embeddings() {
    assert!(tensors_of("tied").iter().all(|t| t.0 != "lm_head.weight"));
    let m = load(&common::model_dir("tied")).unwrap();
    assert_eq!(m.lm_head.out_features, m.vocab_size());
}

#[test]
fn a_key_given_twice_is_refused_by_name() {
    // A JSON map keeps the last of two equal keys; the header must not (it led to a "gap" error).
    let h = format!(r#"{{{A},"a":{{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}}}"#);
    expect_err_naming(with_header("dup", &h, 16), Some("a"), "more than once");
}

#[test]
fn rank_and_tensor_count_are_bounded() {
    let h = r#"{"a":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1,2],"data_offsets":[0,8]}}"#;
    expect_err_naming(with_header("rank", h, 8), Some("a"), "over the limit of 8");
}
