//! `quantize` writes a checkpoint that loads to the same logits, bit for bit, as quantizing at load; and a
//! quantized file with wrong block counts, non-finite scales, an unknown format or a quantized tensor where
//! floats are required is refused with an error naming the tensor.

use std::path::{Path, PathBuf};

use qwen3vl_engine::dev::logits::{compute_logits, LogitsOptions};
use qwen3vl_engine::quantize::{quantize_checkpoint, QuantizeOptions};
use qwen3vl_kernels::Kernels;
use qwen3vl_model::weights::{write_safetensors_with_metadata, Dtype, OutTensor, Weights};
use qwen3vl_model::{LoadOptions, Model, Precision, QuantFormat};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qwen3vl-quantize-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn quantized(geometry: &str) -> PathBuf {
    quantized_as(geometry, QuantFormat::Q8)
}

fn quantized_as(geometry: &str, format: QuantFormat) -> PathBuf {
    let out = tmp(&format!("{geometry}-{format}"));
    let src = if geometry == "bad" {
        "untied"
    } else {
        geometry
    };
    let s = quantize_checkpoint(
        &QuantizeOptions {
            model_dir: testdata().join(format!("model-tiny-{src}")),
            out_dir: out.clone(),
            quant: format,
            vision_quant: Some(format),
        },
        &Kernels::detect().unwrap(),
    )
    .unwrap();
    // (no size check: the tiny checkpoints' rows of 8 values are padded to blocks of 32)
    assert!(s.tensors_quantized > 0 && s.tensors_copied > 0, "{s:?}");
    let w = Weights::open_dir(&out).unwrap();
    for key in [
        "model.language_model.layers.0.self_attn.q_proj.weight",
        "model.language_model.layers.0.mlp.down_proj.weight",
        "model.visual.blocks.0.attn.qkv.weight",
    ] {
        assert!(w.is_quantized(key), "{key} not quantized");
        assert_eq!(
            w.metadata_of(key, &Weights::quant_meta_key(key)),
            Some(format.name())
        );
    }
    assert!(!w.is_quantized("model.language_model.norm.weight"));
    out
}

fn logits(dir: &Path, quant: Option<QuantFormat>) -> Vec<f32> {
    let img = testdata().join("model-reference/img_64x96.png");
    compute_logits(&LogitsOptions {
        model_dir: dir.to_path_buf(),
        images: vec![img],
        system: None,
        prompt: "What is in the picture?".into(),
        precision: Precision::F32,
        quant,
        vision_quant: quant,
        out: PathBuf::new(),
    })
    .unwrap()
    .last_logits
}

#[test]
fn quantized_checkpoint_gives_the_logits_of_quantize_at_load() {
    for format in QuantFormat::ALL {
        for geometry in ["tied", "untied"] {
            let q = quantized_as(geometry, format);
            let at_load = logits(
                &testdata().join(format!("model-tiny-{geometry}")),
                Some(format),
            );
            let from_file = logits(&q, None);
            assert_eq!(at_load.len(), from_file.len());
            let same = at_load
                .iter()
                .zip(&from_file)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{format} {geometry}: logits differ");
            let _ = std::fs::remove_dir_all(&q);
        }
    }
}

/// A tensor as `load_edited` hands it out: (name, dtype, shape, bytes).
type Tensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// The tensor named `key` among `ts`.
fn tensor<'a>(ts: &'a mut [Tensor], key: &str) -> &'a mut Tensor {
    ts.iter_mut()
        .find(|t| t.0 == key)
        .unwrap_or_else(|| panic!("no tensor {key}"))
}

/// Sets the quantization format `key`'s metadata names.
fn set_format(meta: &mut [(String, String)], key: &str, format: &str) {
    let mk = Weights::quant_meta_key(key);
    meta.iter_mut()
        .find(|m| m.0 == mk)
        .unwrap_or_else(|| panic!("no metadata {mk}"))
        .1 = format.into();
}

/// Rewrites `dir/model.safetensors` with `edit` applied to its tensors and metadata, loads it, and puts
/// the original file back; "loaded" or the load error.
fn load_edited(dir: &Path, edit: impl Fn(&mut Vec<Tensor>, &mut Vec<(String, String)>)) -> String {
    let path = dir.join("model.safetensors");
    let original = std::fs::read(&path).unwrap();
    let (mut ts, mut meta) = {
        let w = Weights::open_dir(dir).unwrap();
        let mut keys: Vec<String> = w.keys().map(str::to_string).collect();
        keys.sort();
        let meta: Vec<(String, String)> = keys
            .iter()
            .filter_map(|k| {
                let mk = Weights::quant_meta_key(k);
                w.metadata_of(k, &mk).map(|v| (mk.clone(), v.to_string()))
            })
            .collect();
        let ts: Vec<_> = keys
            .iter()
            .map(|k| {
                let t = w.raw(k).unwrap();
                (k.clone(), t.dtype, t.shape.clone(), t.bytes().to_vec())
            })
            .collect();
        (ts, meta)
    };
    edit(&mut ts, &mut meta);
    let out: Vec<OutTensor> = ts
        .iter()
        .map(|(n, d, s, b)| OutTensor::borrowed(n, *d, s, b))
        .collect();
    write_safetensors_with_metadata(&path, &out, &meta).unwrap();
    let loaded = match Model::load(dir, Kernels::detect().unwrap(), &LoadOptions::default()) {
        Ok(_) => "loaded".into(),
        Err(e) => e.to_string(),
    };
    std::fs::write(&path, original).unwrap();
    loaded
}

#[test]
fn bad_quantized_files_are_refused_naming_the_tensor() {
    let q = quantized("bad");
    let key = "model.language_model.layers.0.mlp.down_proj.weight";
    let skey = format!("{key}_scale");

    // wrong block count: one scale too many per row
    let e = load_edited(&q, |ts, _| {
        let t = tensor(ts, &skey);
        t.2[1] += 1;
        t.3.extend(vec![0u8; t.2[0] * 4]);
    });
    assert!(e.contains(&skey) && e.contains("shape"), "{e}");

    // NaN and inf scales
    for bad in [f32::NAN, f32::INFINITY] {
        let e = load_edited(&q, |ts, _| {
            let t = tensor(ts, &skey);
            t.3[4..8].copy_from_slice(&bad.to_le_bytes());
        });
        assert!(e.contains(&skey) && e.contains("finite"), "{e}");
    }

    // a format we do not know
    let e = load_edited(&q, |_, meta| {
        set_format(meta, key, "q5");
    });
    assert!(e.contains(key) && e.contains("\"q5\" is not known"), "{e}");

    // no format at all
    let e = load_edited(&q, |_, meta| {
        meta.retain(|m| m.0 != Weights::quant_meta_key(key))
    });
    assert!(
        e.contains(key) && e.contains("without a quantization format"),
        "{e}"
    );

    // a quantized tensor where f32 is required (a norm weight)
    let nkey = "model.language_model.norm.weight";
    let e = load_edited(&q, |ts, meta| {
        let t = tensor(ts, nkey);
        // same shape, U8 (its first bytes)
        t.1 = Dtype::U8;
        t.3.truncate(t.2[0]);
        meta.push((Weights::quant_meta_key(nkey), "q8".into()));
    });
    assert!(e.contains(nkey) && e.contains("U8"), "{e}");

    assert_eq!(load_edited(&q, |_, _| {}), "loaded");
    let _ = std::fs::remove_dir_all(&q);
}

#[test]
fn bad_q4_files_are_refused_naming_the_tensor() {
    let q = quantized_as("bad", QuantFormat::Q4);
    let key = "model.language_model.layers.1.self_attn.o_proj.weight";
    let skey = format!("{key}_scale");

    // one super-block too many per row: the values' shape, then the scales' shape
    let e = load_edited(&q, |ts, _| {
        let t = tensor(ts, key);
        t.2[1] += 144;
        t.3.extend(vec![0u8; t.2[0] * 144]);
    });
    assert!(e.contains(key) && e.contains("shape"), "{e}");
    let e = load_edited(&q, |ts, _| {
        let t = tensor(ts, &skey);
        t.2[1] += 2;
        t.3.extend(vec![0u8; t.2[0] * 8]);
    });
    assert!(e.contains(&skey) && e.contains("shape"), "{e}");

    // a NaN minimum scale, an infinite scale, a negative minimum
    for (at, bad) in [(4, f32::NAN), (0, f32::INFINITY), (4, -2.0)] {
        let e = load_edited(&q, |ts, _| {
            let t = tensor(ts, &skey);
            t.3[at..at + 4].copy_from_slice(&bad.to_le_bytes());
        });
        assert!(e.contains(&skey) && e.contains("finite"), "{bad}: {e}");
    }

    // the metadata says q8 for q4 bytes: the shapes do not fit the format, an error naming the tensor
    let e = load_edited(&q, |_, meta| {
        set_format(meta, key, "q8");
    });
    assert!(e.contains(key) && e.contains("shape"), "{e}");

    // parts of one fused weight in different formats (q_proj q4, k_proj claimed q8 with q8 shapes)
    let kkey = "model.language_model.layers.0.self_attn.k_proj.weight";
    let e = load_edited(&q, |ts, meta| {
        // k = hidden = 8 (one q8 block per row); n rows as stored
        let k = 8usize;
        let t = tensor(ts, kkey);
        let n = t.2[0];
        (t.2, t.3) = (vec![n, 32], vec![0u8; n * 32]);
        let s = tensor(ts, &format!("{kkey}_scale"));
        (s.2, s.3) = (vec![n, k.div_ceil(32)], vec![0u8; n * 4]);
        set_format(meta, kkey, "q8");
    });
    assert!(e.contains(kkey) && e.contains("format"), "{e}");

    assert_eq!(load_edited(&q, |_, _| {}), "loaded");
    let _ = std::fs::remove_dir_all(&q);
}
