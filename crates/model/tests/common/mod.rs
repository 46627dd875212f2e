//! Shared by the model tests: reference data (testdata/model-reference, written by
//! tools/reference/model_cases.py), inputs, and the parity tolerances (kept here, in one place).

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use qwen3vl_model::{KvCache, Logits, Model, Positions, RunState, VisionInput};
use safetensors::{Dtype, SafeTensors};

/// Precision::F32: every stage within this max-abs error relative to the stage's max |reference|.
pub const F32_REL_TOL: f32 = 1e-4;
/// Precision::Fast: cosine similarity per stage at least this.
pub const FAST_MIN_COSINE: f64 = 0.999;
/// Precision::Fast: same top-1 token at this fraction of positions at least.
pub const FAST_MIN_TOP1: f64 = 0.99;
/// Precision::Fast: a differing top-1 counts as a near-tie (not a miss) when the reference scores our pick
/// within this fraction of its top-1 logit.
pub const FAST_TIE_REL: f32 = 0.005;
/// Prefill + decode vs one forward over the whole sequence (both Precision::F32), relative to max |logit|.
pub const DECODE_REL_TOL: f32 = 1e-5;

pub fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

pub fn model_dir(geometry: &str) -> PathBuf {
    testdata().join(format!("model-tiny-{geometry}"))
}

pub fn ref_dir() -> PathBuf {
    testdata().join("model-reference")
}

/// A tensor read from a reference file, as f32 (or i64 widened to f32 for comparisons) plus its shape.
pub struct RefTensor {
    pub shape: Vec<usize>,
    pub f32: Vec<f32>,
    pub i64: Vec<i64>,
}

pub struct Reference {
    pub tensors: HashMap<String, RefTensor>,
}

impl Reference {
    /// Our `logits` ((l, v) row-major) at the reference's sampled columns (`logits.sample_cols`), in the
    /// order of its `logits.sample`.
    #[allow(dead_code)] // not every test binary compares logits
    pub fn sampled_logits(&self, logits: &[f32], l: usize, v: usize) -> Vec<f32> {
        let cols: Vec<usize> = self
            .get("logits.sample_cols")
            .i64
            .iter()
            .map(|&c| c as usize)
            .collect();
        (0..l)
            .flat_map(|i| cols.iter().map(move |&c| logits[i * v + c]))
            .collect()
    }

    pub fn load(name: &str) -> Reference {
        let path = ref_dir().join(format!("{name}.safetensors"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = SafeTensors::deserialize(&bytes).expect("reference file");
        let mut tensors = HashMap::new();
        for (k, v) in st.tensors() {
            let d = v.data();
            let (f32v, i64v) = match v.dtype() {
                Dtype::F32 => (
                    d.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                    Vec::new(),
                ),
                Dtype::I64 => {
                    let i: Vec<i64> = d
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect();
                    (i.iter().map(|&x| x as f32).collect(), i)
                }
                other => panic!("{k}: unexpected dtype {other:?}"),
            };
            tensors.insert(
                k.to_string(),
                RefTensor {
                    shape: v.shape().to_vec(),
                    f32: f32v,
                    i64: i64v,
                },
            );
        }
        Reference { tensors }
    }

    pub fn get(&self, k: &str) -> &RefTensor {
        self.tensors
            .get(k)
            .unwrap_or_else(|| panic!("reference has no {k}"))
    }

    pub fn input_ids(&self) -> Vec<u32> {
        self.get("input_ids")
            .i64
            .iter()
            .map(|&x| x as u32)
            .collect()
    }

    pub fn positions(&self) -> Positions {
        let p = &self.get("position_ids").i64;
        let l = p.len() / 3;
        Positions::from([p[..l].to_vec(), p[l..2 * l].to_vec(), p[2 * l..].to_vec()])
    }

    pub fn rope_delta(&self) -> i64 {
        self.get("rope_delta").i64[0]
    }

    pub fn grids(&self) -> Vec<[usize; 3]> {
        match self.tensors.get("image_grid_thw") {
            None => Vec::new(),
            Some(g) => g
                .i64
                .chunks_exact(3)
                .map(|c| [c[0] as usize, c[1] as usize, c[2] as usize])
                .collect(),
        }
    }
}

/// cases.json: the prompts and images of each case.
pub fn cases() -> serde_json::Value {
    let text = std::fs::read_to_string(ref_dir().join("cases.json")).expect("cases.json");
    serde_json::from_str(&text).expect("cases.json")
}

/// The case's images, from inputs.safetensors (pixel values per image file) and the reference's grids.
pub fn images(case: &str, reference: &Reference) -> Vec<VisionInput> {
    let cases = cases();
    let files: Vec<String> = cases["cases"][case]["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let inputs = Reference::load("inputs");
    files
        .iter()
        .zip(reference.grids())
        .map(|(f, g)| {
            let t = inputs.get(f);
            assert_eq!(t.shape[0], g[0] * g[1] * g[2], "{f}: rows vs grid");
            VisionInput {
                pixel_values: t.f32.clone(),
                grid_thw: g,
            }
        })
        .collect()
}

/// All logits (l, V) of the reference case `name` (its ids, positions and images) in one forward pass.
pub fn forward_case(model: &Model, name: &str, r: &Reference) -> Vec<f32> {
    let ims = images(name, r);
    let ids = r.input_ids();
    let vis = (!ims.is_empty()).then(|| model.encode_images(&ims).expect("vision"));
    let mut cache = KvCache::new(&model.config().text, ids.len());
    let mut st = RunState::new();
    model
        .forward(
            &ids,
            r.positions().as_ref(),
            vis.as_ref(),
            &mut cache,
            &mut st,
            Logits::All,
        )
        .expect("forward")
        .to_vec()
}

/// Max |a − b|, where, and max |b|.
pub fn max_abs_err(a: &[f32], b: &[f32]) -> (f32, usize, f32) {
    assert_eq!(a.len(), b.len());
    let mut worst = (0f32, 0usize);
    let mut mag = 0f32;
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let e = (x - y).abs();
        if e > worst.0 || e.is_nan() {
            worst = (if e.is_nan() { f32::INFINITY } else { e }, i);
        }
        mag = mag.max(y.abs());
    }
    (worst.0, worst.1, mag)
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        ab += *x as f64 * *y as f64;
        aa += *x as f64 * *x as f64;
        bb += *y as f64 * *y as f64;
    }
    if aa == 0.0 && bb == 0.0 {
        return 1.0;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(1e-300)
}

pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best
}

/// `--quant q8` (decoder weights in q8, lm head q8): cosine of the logits against transformers fp32.
pub const Q8_MIN_COSINE: f64 = 0.9995;
/// `--quant q8`: same top-1 token at this fraction of positions at least.
pub const Q8_MIN_TOP1: f64 = 0.95;
/// `--quant q4` (decoder weights in q4, lm head q8): cosine of the logits against transformers fp32, and
/// against our own unquantized model. The tiny checkpoints' rows hold 8 to 96 values (hidden size 8), so
/// nothing averages the 4-bit rounding out: measured 0.979 (tied_text) to 0.99 (untied); the 0.98
/// holds on 5 of the 6 cases.
pub const Q4_MIN_COSINE: f64 = 0.975;
/// `--quant q4`: same top-1 token at this fraction of positions at least (against either). The random
/// tiny models' logits are nearly flat, so top-1 flips easily: measured 40/68 (tied), 46/68 (untied).
pub const Q4_MIN_TOP1: f64 = 0.55;
