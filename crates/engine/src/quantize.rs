//! `qwen3vl quantize`: writes a quantized checkpoint that loads without quantizing again.
//!
//! Layout (safetensors, the Hub layout otherwise): each quantized weight `K` (n, k) is stored as `K`, U8
//! (n, row bytes) — the two's-complement int8 values, rows zero-padded to whole blocks of 32 — and
//! `K_scale`, F32 (n, blocks); the header's `__metadata__` names its format as `"quant:K": "q8"`. Every
//! other tensor is copied as it is; config, tokenizer and the other files are copied; shards keep their
//! names (and the index its structure). The weights quantized are exactly those `--quant` / `--vision-quant`
//! quantize at load, with the same quantizer, so the loaded model computes the same logits bit for bit.
//! In each file the quantized values come first (the parts of a fused weight — q, k, v; gate, up — next
//! to one another, `fused_order`), then their scales, then the copied tensors, from a 64-byte-aligned data
//! section: the loader uses such weights in place from the mapping (`QuantWeight::from_shared`) instead
//! of copying them, so a quantized checkpoint loads at the speed of mapping it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use qwen3vl_kernels::matmul::Weight;
use qwen3vl_kernels::quant::QuantWeight;
use qwen3vl_kernels::Kernels;
use qwen3vl_model::text::{fused_order, text_linear_format, TextLinear};
use qwen3vl_model::weights::{write_safetensors_with_metadata, Dtype, OutTensor, Weights};
use qwen3vl_model::{Config, QuantFormat};

/// Inputs of [`quantize_checkpoint`].
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    pub model_dir: PathBuf,
    pub out_dir: PathBuf,
    /// Format of the text decoder's linears (the lm head / tied embeddings are q8).
    pub quant: QuantFormat,
    /// Format of the vision tower's linears (None: kept as stored).
    pub vision_quant: Option<QuantFormat>,
}

/// What was written.
#[derive(Clone, Debug, Default)]
pub struct QuantizeSummary {
    pub tensors_quantized: usize,
    pub tensors_copied: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// The format tensor `key` is quantized to (the rules of the load-time `--quant`, the text decoder's per
/// layer from [`text_linear_format`]), or None. `layers`: the text decoder's.
pub fn format_of(
    key: &str,
    tied: bool,
    layers: usize,
    quant: QuantFormat,
    vision_quant: Option<QuantFormat>,
) -> Option<QuantFormat> {
    const VISION_LINEARS: [&str; 4] = [
        ".attn.qkv.weight",
        ".attn.proj.weight",
        ".linear_fc1.weight",
        ".linear_fc2.weight",
    ];
    if let Some((layer, kind)) = TextLinear::of_key(key) {
        Some(text_linear_format(quant, layer, layers, kind))
    } else if (tied && key == "model.language_model.embed_tokens.weight")
        || (!tied && key == "lm_head.weight")
    {
        Some(QuantFormat::Q8)
    } else if key.starts_with("model.visual.") && VISION_LINEARS.iter().any(|s| key.ends_with(s)) {
        vision_quant
    } else {
        None
    }
}

/// A MoE layer's fused expert tensor (spec 1.3): `mlp.experts.gate_up_proj` or `mlp.experts.down_proj`.
pub fn is_expert_tensor(key: &str) -> bool {
    key.ends_with(".mlp.experts.gate_up_proj") || key.ends_with(".mlp.experts.down_proj")
}

/// A fused expert tensor quantized as the rows of its transformers layout, (E·2I, H) or (E·H, I), one
/// expert at a time (a released-layout tensor, (E, H, 2I) or (E, I, H), is transposed per expert): the rows
/// the model's loader cuts into one quantized weight per expert.
fn quantize_experts(
    key: &str,
    t: &qwen3vl_model::weights::TensorRef,
    config: &Config,
    f: QuantFormat,
    k: &Kernels,
) -> Result<(qwen3vl_kernels::quant::QuantWeight, usize, usize)> {
    let Some(moe) = &config.text.moe else {
        bail!("tensor {key}: expert weights in a checkpoint whose config.json is not a MoE one");
    };
    let (e, h, i) = (
        moe.num_experts,
        config.text.hidden_size,
        moe.moe_intermediate_size,
    );
    let (rows, kk) = if key.ends_with("gate_up_proj") {
        (2 * i, h)
    } else {
        (h, i)
    };
    let transpose = if t.shape == [e, rows, kk] {
        false
    } else if t.shape == [e, kk, rows] {
        true
    } else {
        bail!(
            "tensor {key}: shape {:?} is neither the transformers layout {:?} nor the released layout {:?}",
            t.shape,
            [e, rows, kk],
            [e, kk, rows]
        );
    };
    let vals = t.to_f32()?;
    let mut p = k
        .quant_packer(f, e * rows, kk)
        .with_context(|| format!("quantizing {key}"))?;
    let mut tr = Vec::new();
    for x in vals.chunks_exact(rows * kk) {
        let part = if transpose {
            transpose_expert(x, kk, rows, &mut tr);
            &tr[..]
        } else {
            x
        };
        p.push(Weight::F32(part), rows)
            .with_context(|| format!("quantizing {key}"))?;
    }
    Ok((p.finish()?, e * rows, kk))
}

/// Writes the quantized checkpoint of `opts.model_dir` into `opts.out_dir` (created; must be empty).
pub fn quantize_checkpoint(opts: &QuantizeOptions, k: &Kernels) -> Result<QuantizeSummary> {
    let (src, dst) = (&opts.model_dir, &opts.out_dir);
    let config = Config::from_file(&src.join("config.json"))?;
    let weights = Weights::open_dir(src)?;
    if dst.exists() {
        let mut entries = std::fs::read_dir(dst).with_context(|| format!("{}", dst.display()))?;
        if entries.next().is_some() {
            bail!("{}: the output directory is not empty", dst.display());
        }
    }
    std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    if same_dir(src, dst) {
        bail!("--out must differ from --model");
    }

    // keys grouped by the file that holds them, in a stable order
    let mut files: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key in weights.keys() {
        let f = weights.file_of(key).expect("indexed key");
        let name = f.file_name().expect("file").to_string_lossy().to_string();
        files.entry(name).or_default().push(key.to_string());
    }
    let mut summary = QuantizeSummary::default();
    let mut weight_map: BTreeMap<String, String> = BTreeMap::new();
    for (file, mut keys) in files {
        // the parts of a fused weight next to one another (see `fused_order`)
        keys.sort_by_cached_key(|k| fused_order(k));
        // quantized parts are owned here; copied tensors borrow the mapping
        // Order in the file: every quantized weight's values, then their scales, then the copied tensors.
        // Values and scales are multiples of 64 bytes at the model's shapes and the data section starts at
        // one, so each fused weight's values (and its scales) lie contiguous and aligned: loaded in place.
        let mut owned: Vec<OwnedTensor> = Vec::new();
        let mut owned_scales: Vec<OwnedTensor> = Vec::new();
        let mut meta = Vec::new();
        let mut copied = Vec::new();
        for key in &keys {
            let t = weights.raw(key)?;
            summary.bytes_in += t.bytes().len() as u64;
            let fmt = format_of(
                key,
                config.tie_word_embeddings,
                config.text.num_hidden_layers,
                opts.quant,
                opts.vision_quant,
            );
            let expert = is_expert_tensor(key) && t.shape.len() == 3;
            match (fmt, t.shape.as_slice()) {
                (Some(f), &[n, kk]) | (Some(f), &[_, n, kk]) if expert || t.shape.len() == 2 => {
                    let (q, n, kk) = if expert {
                        quantize_experts(key, &t, &config, f, k)?
                    } else {
                        let q = match t.bf16_bits() {
                            Some(bits) => k.quantize_weight(f, Weight::Bf16(&bits), n, kk),
                            None => k.quantize_weight(f, Weight::F32(&t.to_f32()?), n, kk),
                        }
                        .with_context(|| format!("quantizing {key}"))?;
                        (q, n, kk)
                    };
                    t.release();
                    let ([values, scales], m) = stored_quantized(key, &q, f, n, kk);
                    owned.push(values);
                    owned_scales.push(scales);
                    meta.push(m);
                    summary.tensors_quantized += 1;
                }
                (Some(_), shape) => {
                    bail!("tensor {key}: shape {shape:?} is not 2-D, cannot quantize")
                }
                (None, _) => {
                    copied.push(t);
                    summary.tensors_copied += 1;
                }
            }
        }
        owned.append(&mut owned_scales);
        let mut out = out_tensors(&owned);
        out.extend(
            copied
                .iter()
                .map(|t| OutTensor::borrowed(&t.key, t.dtype, &t.shape, t.bytes())),
        );
        for t in &out {
            weight_map.insert(t.name.to_string(), file.clone());
            summary.bytes_out += t.data.len() as u64;
        }
        meta.push(("format".into(), "pt".into()));
        write_safetensors_with_metadata(&dst.join(&file), &out, &meta)?;
    }

    // the other files: config, tokenizer, templates, ...; the index is rewritten
    for e in std::fs::read_dir(src).with_context(|| format!("{}", src.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if !e.path().is_file() // (follows symlinks: the file's contents are copied)
            || name.ends_with(".safetensors")
            || name == "model.safetensors.index.json"
        {
            continue;
        }
        std::fs::copy(e.path(), dst.join(&name))
            .with_context(|| format!("copying {}", e.path().display()))?;
    }
    if src.join("model.safetensors.index.json").exists() {
        let index = serde_json::json!({
            "metadata": {"total_size": summary.bytes_out},
            "weight_map": weight_map,
        });
        std::fs::write(
            dst.join("model.safetensors.index.json"),
            serde_json::to_string_pretty(&index)?,
        )?;
    }
    Ok(summary)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// One tensor of a checkpoint being written: (name, bytes, shape, dtype).
pub type OwnedTensor = (String, Vec<u8>, Vec<usize>, Dtype);

/// The writer's views of owned tensors (borrowing their names and bytes).
pub fn out_tensors(owned: &[OwnedTensor]) -> Vec<OutTensor<'_>> {
    owned
        .iter()
        .map(|(name, data, shape, dtype)| OutTensor::borrowed(name, *dtype, shape, data))
        .collect()
}

/// A tensor's entry in a safetensors header, its bytes aside: (name, shape, dtype).
pub type TensorEntry = (String, Vec<usize>, Dtype);

/// How a quantized checkpoint stores the (n, kk) weight `key` quantized to `f`, the one layout that
/// `qwen3vl quantize`, `init-random --quant` and the fuzz seeds write: its values (U8, (n, row bytes)),
/// then `{key}_scale` (F32, (n, row scales)), each as (name, shape, dtype); and the `quant:{key}` metadata
/// entry naming the format. [`quantized_bytes`] gives the two entries' bytes.
pub fn quantized_entries(
    key: &str,
    f: QuantFormat,
    n: usize,
    kk: usize,
) -> ([TensorEntry; 2], (String, String)) {
    (
        [
            (key.to_string(), vec![n, f.row_bytes(kk)], Dtype::U8),
            (
                format!("{key}_scale"),
                vec![n, f.row_scales(kk)],
                Dtype::F32,
            ),
        ],
        (Weights::quant_meta_key(key), f.name().to_string()),
    )
}

/// The bytes of the two entries of [`quantized_entries`] for `q`: its values as it holds them
/// (borrowed), then its scales as little-endian f32.
pub fn quantized_bytes(q: &QuantWeight) -> [Cow<'_, [u8]>; 2] {
    [
        Cow::Borrowed(q.qs_bytes()),
        Cow::Owned(q.scales().iter().flat_map(|v| v.to_le_bytes()).collect()),
    ]
}

/// The two tensors of [`quantized_entries`] with their [`quantized_bytes`] (copied), and the metadata
/// entry, for a writer that holds its tensors until the file is written.
pub fn stored_quantized(
    key: &str,
    q: &QuantWeight,
    f: QuantFormat,
    n: usize,
    kk: usize,
) -> ([OwnedTensor; 2], (String, String)) {
    debug_assert_eq!((q.format(), q.n(), q.k()), (f, n, kk), "{key}");
    let ([(vn, vs, vd), (sn, ss, sd)], meta) = quantized_entries(key, f, n, kk);
    let [v, s] = quantized_bytes(q);
    (
        [(vn, v.into_owned(), vs, vd), (sn, s.into_owned(), ss, sd)],
        meta,
    )
}

/// One expert's (a, b) matrix (row-major, the released layout) transposed into `out` (cleared first) as
/// the (b, a) rows of its transformers layout, the rows a quantized expert tensor stores.
pub fn transpose_expert<T: Copy>(x: &[T], a: usize, b: usize, out: &mut Vec<T>) {
    out.clear();
    out.extend((0..a * b).map(|i| x[(i % a) * b + i / a]));
}
