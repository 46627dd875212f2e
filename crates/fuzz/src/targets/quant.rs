//! `quantized`: a quantized checkpoint's MLP (what `qwen3vl quantize` writes) loaded by the model's own
//! loader of stored quantized weights (`qwen3vl_model::load_stored_quant`): `Weights::quantized` checks the
//! format metadata, the U8 shape and the F32 scales; parts that follow one another (gate|up, values then
//! scales, as the seeds are laid out) are used in place by `QuantWeight::from_shared` (range, alignment and
//! scale checks), others are stacked by `QuantPacker::push_quantized`; then every row is dequantized and the
//! MLP's matmuls run on the int8 kernels.

use std::sync::OnceLock;

use qwen3vl_engine::quantize::{stored_quantized, OwnedTensor};
use qwen3vl_kernels::matmul::Weight;
use qwen3vl_kernels::quant::QuantWeight;
use qwen3vl_model::weights::{write_safetensors_with_metadata, Weights};
use qwen3vl_model::{load_stored_quant, QuantFormat};

use super::{kernels, scratch};

const PREFIX: &str = "model.language_model.layers.0.mlp.";
/// Hidden size of the tiny checkpoint (testdata/model-tiny-tied).
const H: usize = 8;
/// Its intermediate size.
const I: usize = 24;
/// Rows of x through gate|up (2I, H) and down (H, I).
const M: usize = 3;

fn key(name: &str) -> String {
    format!("{PREFIX}{name}_proj.weight")
}

/// Seeds: layer 0's MLP of the tiny checkpoint quantized with the quantizer of `qwen3vl quantize` and
/// written by its writer in its order (every quantized weight's values, then their scales, then the float
/// tensors: gate|up loads in place): all three q8; gate and up kept bf16 with down q4.
pub fn seeds() -> Vec<Vec<u8>> {
    static S: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    S.get_or_init(|| {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/model-tiny-tied");
        let w = Weights::open_dir(&dir).expect("the tiny checkpoint opens");
        let layouts: [[Option<QuantFormat>; 3]; 2] = [
            [Some(QuantFormat::Q8); 3],
            [None, None, Some(QuantFormat::Q4)],
        ];
        layouts.iter().map(|formats| seed(&w, formats)).collect()
    })
    .clone()
}

fn seed(w: &Weights, formats: &[Option<QuantFormat>; 3]) -> Vec<u8> {
    let k = kernels();
    let (mut owned, mut scales, mut floats): (
        Vec<OwnedTensor>,
        Vec<OwnedTensor>,
        Vec<OwnedTensor>,
    ) = Default::default();
    let mut meta = Vec::new();
    for ((name, n, kk), f) in [("gate", I, H), ("up", I, H), ("down", H, I)]
        .into_iter()
        .zip(formats)
    {
        let key = key(name);
        let t = w.float(&key, &[n, kk]).expect("tiny MLP weight");
        match f {
            None => floats.push((key, t.bytes().to_vec(), vec![n, kk], t.dtype)),
            Some(f) => {
                let q = k
                    .quantize_weight(*f, Weight::F32(&t.to_f32().expect("f32")), n, kk)
                    .expect("quantize");
                let ([values, s], m) = stored_quantized(&key, &q, *f, n, kk);
                owned.push(values);
                scales.push(s);
                meta.push(m);
            }
        }
    }
    owned.append(&mut scales);
    owned.append(&mut floats);
    meta.push(("format".into(), "pt".into()));
    let out = qwen3vl_engine::quantize::out_tensors(&owned);
    let p = scratch("quant-seed").join("model.safetensors");
    write_safetensors_with_metadata(&p, &out, &meta).expect("seed written");
    std::fs::read(&p).expect("seed read back")
}

/// A weight as the loader holds it: quantized, or floats (the float path is the other targets').
enum Loaded {
    Quant(QuantWeight),
    Float,
}

/// The parts `(key, rows)` of one (Σ rows, inp) weight, loaded as the model loads them.
fn load(w: &Weights, parts: &[(String, usize)], inp: usize) -> Option<Loaded> {
    match load_stored_quant(w, &kernels(), parts, inp, &|_| {}) {
        Ok(Some(q)) => Some(Loaded::Quant(q)),
        Ok(None) => {
            for (key, rows) in parts {
                w.float(key, &[*rows, inp]).ok()?.to_f32().ok()?;
            }
            Some(Loaded::Float)
        }
        Err(_) => None,
    }
}

/// Dequantizes every row and runs x (M, k) through the weight.
fn exercise(w: &QuantWeight) -> Vec<f32> {
    let (n, k) = (w.n(), w.k());
    let mut row = vec![0f32; k];
    for r in 0..n {
        w.row_f32(r, &mut row).expect("row in range");
    }
    let x: Vec<f32> = (0..M * k)
        .map(|i| ((i * 37 % 19) as f32 - 9.0) / 7.0)
        .collect();
    let mut y = vec![0f32; M * n];
    kernels()
        .matmul_quant(&x, M, w, None, &mut y)
        .expect("shapes of the loaded weight");
    y
}

pub fn run(b: &[u8]) -> bool {
    let d = scratch("quant");
    if std::fs::write(d.join("model.safetensors"), b).is_err() {
        return false;
    }
    let Ok(w) = Weights::open_dir(&d) else {
        return false;
    };
    let Some(gate_up) = load(&w, &[(key("gate"), I), (key("up"), I)], H) else {
        return false;
    };
    let Some(down) = load(&w, &[(key("down"), H)], I) else {
        return false;
    };
    for l in [&gate_up, &down] {
        if let Loaded::Quant(q) = l {
            let y = exercise(q);
            assert_eq!(y.len(), M * q.n());
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The q8 seed is laid out as `qwen3vl quantize` writes: its gate|up loads in place (so mutants reach
    /// `QuantWeight::from_shared`'s checks), and gives the same products as the copied weight.
    #[test]
    fn q8_seed_loads_gate_up_in_place() {
        let d = scratch("quant-test");
        std::fs::write(d.join("model.safetensors"), &seeds()[0]).unwrap();
        let w = Weights::open_dir(&d).unwrap();
        let parts = [(key("gate"), I), (key("up"), I)];
        let Some(Loaded::Quant(q)) = load(&w, &parts, H) else {
            panic!("gate|up of the q8 seed did not load as a quantized weight");
        };
        assert!(
            q.is_shared(),
            "gate|up of the q8 seed was copied, not used in place"
        );
        // the copy path on the same bytes: one part at a time, stacked by the packer
        let mut p = kernels().quant_packer(QuantFormat::Q8, 2 * I, H).unwrap();
        for (key, rows) in &parts {
            let s = w.quantized(key, *rows, H).unwrap();
            p.push_quantized(s.values.bytes(), &s.d, *rows).unwrap();
        }
        let copied = p.finish().unwrap();
        assert!(!copied.is_shared());
        assert_eq!(exercise(&q), exercise(&copied));
    }
}
