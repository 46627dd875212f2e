//! The weights: tensors laid out in shards, streamed to disk a few rows (or one expert) at a time.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use serde_json::{json, Value};

use qwen3vl_kernels::matmul::Weight;
use qwen3vl_kernels::Kernels;
use qwen3vl_model::text::fused_order;
use qwen3vl_model::weights::{safetensors_header, Dtype};
use qwen3vl_model::QuantFormat;

use super::values::fill_bf16;
use super::{io_err, InitError, InitOptions, InitSummary, TensorSpec};
use crate::quantize::{quantized_bytes, quantized_entries, transpose_expert, TensorEntry};
use crate::sampling::Rng;

/// One tensor as written: bf16, or quantized to a format (its entries those of
/// [`quantized_entries`], the layout `qwen3vl quantize` writes).
pub(super) struct Stored {
    spec: TensorSpec,
    quant: Option<QuantFormat>,
    /// (rows, k): the quantized matrix; an expert tensor's rows are those of the transformers layout
    rows: usize,
    k: usize,
    /// A quantized expert tensor: the (rows, cols) of one expert in the released layout, in which its
    /// values are drawn (the same values as the bf16 checkpoint of the same seed), then transposed.
    released: Option<(usize, usize)>,
    /// The header entries, in order: (name, shape, dtype).
    entries: Vec<TensorEntry>,
    /// A quantized tensor's `quant:{name}` metadata entry.
    meta: Option<(String, String)>,
}

impl Stored {
    /// `layers`: the text decoder's (the quantization policy is per layer).
    pub(super) fn new(
        mut spec: TensorSpec,
        tie: bool,
        layers: usize,
        quant: Option<QuantFormat>,
    ) -> Stored {
        let expert = crate::quantize::is_expert_tensor(&spec.name);
        let quant =
            quant.and_then(|q| crate::quantize::format_of(&spec.name, tie, layers, q, None));
        let mut released = None;
        if expert && quant.is_some() {
            // quantized rows are the transformers layout's: (E, 2I, H), (E, H, I)
            let n = spec.shape.len();
            released = Some((spec.shape[n - 2], spec.shape[n - 1]));
            spec.shape.swap(n - 2, n - 1);
        }
        let k = *spec.shape.last().unwrap_or(&1);
        let rows = spec.numel() as usize / k.max(1);
        let (entries, meta) = match quant {
            None => (
                vec![(spec.name.clone(), spec.shape.clone(), Dtype::BF16)],
                None,
            ),
            Some(f) => {
                let (entries, meta) = quantized_entries(&spec.name, f, rows, k);
                (entries.to_vec(), Some(meta))
            }
        };
        Stored {
            spec,
            quant,
            rows,
            k,
            released,
            entries,
            meta,
        }
    }

    fn bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|(_, shape, dtype)| {
                shape.iter().map(|&d| d as u64).product::<u64>() * dtype.size() as u64
            })
            .sum()
    }
}

/// Split tensors of these sizes into shards of at most `limit` bytes, keeping order.
fn plan_shards(sizes: &[u64], limit: u64) -> Vec<std::ops::Range<usize>> {
    let mut shards = Vec::new();
    let mut start = 0;
    let mut size = 0u64;
    for (i, &b) in sizes.iter().enumerate() {
        if i > start && size + b > limit {
            shards.push(start..i);
            start = i;
            size = 0;
        }
        size += b;
    }
    if start < sizes.len() {
        shards.push(start..sizes.len());
    }
    shards
}

pub(super) fn write_weights(
    out: &Path,
    tensors: &[Stored],
    opts: &InitOptions,
) -> Result<InitSummary, InitError> {
    let sizes: Vec<u64> = tensors.iter().map(Stored::bytes).collect();
    let shards = plan_shards(&sizes, opts.shard_bytes.max(1));
    let total: u64 = sizes.iter().sum();
    let n = shards.len();
    let names: Vec<String> = if n == 1 {
        vec!["model.safetensors".to_string()]
    } else {
        (1..=n)
            .map(|i| format!("model-{i:05}-of-{n:05}.safetensors"))
            .collect()
    };
    let kernels = match opts.quant {
        Some(_) => Some(Kernels::detect().map_err(|e| InitError::Quantize {
            tensor: "(choosing the kernels)".into(),
            msg: e.to_string(),
        })?),
        None => None,
    };
    let mut rng = Rng::new(opts.seed);
    let mut done = 0u64;
    let mut weight_map = serde_json::Map::new();
    for (range, name) in shards.iter().zip(&names) {
        let path = out.join(name);
        let part = &tensors[range.clone()];
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&path).map_err(io_err(&path))?);
        let (header, offsets) = stored_header(part);
        w.write_all(&header).map_err(io_err(&path))?;
        let mut buf: Vec<u8> = Vec::new();
        // tensors are drawn in spec order (the bf16 checkpoint's), each written at its place in the layout
        for (t, at) in part.iter().zip(&offsets) {
            match (t.quant, &kernels) {
                (Some(f), Some(k)) => write_quantized(&mut w, &mut rng, t, f, k, at, &path)?,
                _ => {
                    seek_to(&mut w, at[0], &path)?;
                    // Stream in chunks of 1M elements: memory stays small whatever the tensor size.
                    let mut left = t.spec.numel();
                    while left > 0 {
                        let chunk = left.min(1 << 20) as usize;
                        fill_bf16(&mut rng, t.spec.init, chunk, &mut buf);
                        w.write_all(&buf).map_err(io_err(&path))?;
                        left -= chunk as u64;
                    }
                }
            }
            done += t.bytes();
            for (entry, _, _) in &t.entries {
                weight_map.insert(entry.clone(), Value::String(name.clone()));
            }
            if let Some(p) = opts.progress {
                p(done, total);
            }
        }
        w.flush().map_err(io_err(&path))?;
    }
    if n > 1 {
        let index = json!({ "metadata": {"total_size": total}, "weight_map": weight_map });
        let p = out.join("model.safetensors.index.json");
        std::fs::write(
            &p,
            serde_json::to_string_pretty(&index).unwrap_or_default() + "\n",
        )
        .map_err(io_err(&p))?;
    }
    Ok(InitSummary {
        tensors: tensors.iter().map(|t| t.entries.len()).sum(),
        params: tensors.iter().map(|t| t.spec.numel()).sum(),
        weight_bytes: total,
        shards: names,
    })
}

/// Draws tensor `t` a block of rows (or one expert) at a time, in the order the bf16 checkpoint of the same
/// seed draws them, and quantizes each block to `f` into the tensor's quantized weight (the tensor never
/// exists in bf16; the quantized one, at most about 0.9 GB for the 32B lm head at q8, is held until it is
/// written); then writes the bytes of its entries, [`quantized_bytes`].
fn write_quantized(
    w: &mut (impl Write + Seek),
    rng: &mut Rng,
    t: &Stored,
    f: QuantFormat,
    k: &Kernels,
    at: &[u64],
    path: &Path,
) -> Result<(), InitError> {
    let err = |msg: String| InitError::Quantize {
        tensor: t.spec.name.clone(),
        msg,
    };
    let kk = t.k;
    let mut packer = k
        .quant_packer(f, t.rows, kk)
        .map_err(|e| err(e.to_string()))?;
    let (mut buf, mut bits, mut rows_t) = (Vec::new(), Vec::new(), Vec::new());
    let widen = |buf: &[u8], bits: &mut Vec<u16>| {
        bits.clear();
        bits.extend(
            buf.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]])),
        );
    };
    if let Some((a, b)) = t.released {
        // one expert at a time: (a, b) drawn as released, quantized as its (b, a) transpose
        for _ in 0..t.rows / b {
            fill_bf16(rng, t.spec.init, a * b, &mut buf);
            widen(&buf, &mut bits);
            transpose_expert(&bits, a, b, &mut rows_t);
            packer
                .push(Weight::Bf16(&rows_t), b)
                .map_err(|e| err(e.to_string()))?;
        }
    } else {
        let block = ((1usize << 20) / kk.max(1)).max(1);
        let mut r = 0;
        while r < t.rows {
            let rows = block.min(t.rows - r);
            fill_bf16(rng, t.spec.init, rows * kk, &mut buf);
            widen(&buf, &mut bits);
            packer
                .push(Weight::Bf16(&bits), rows)
                .map_err(|e| err(e.to_string()))?;
            r += rows;
        }
    }
    let q = packer.finish().map_err(|e| err(e.to_string()))?;
    for (((name, shape, dtype), bytes), &off) in t.entries.iter().zip(quantized_bytes(&q)).zip(at) {
        let len = shape.iter().product::<usize>() * dtype.size();
        if bytes.len() != len {
            return Err(err(format!(
                "{name}: {} bytes for the header's {shape:?} × {}",
                bytes.len(),
                dtype.name()
            )));
        }
        seek_to(w, off, path)?;
        w.write_all(&bytes).map_err(io_err(path))?;
    }
    Ok(())
}

/// Moves the writer to byte `off` of the file (no-op where it already is).
fn seek_to(w: &mut (impl Write + Seek), off: u64, path: &Path) -> Result<(), InitError> {
    if w.stream_position().map_err(io_err(path))? != off {
        w.seek(SeekFrom::Start(off)).map_err(io_err(path))?;
    }
    Ok(())
}

/// The safetensors header of `tensors` (a quantized one as its entries, its format in `__metadata__` as
/// `quant:{name}`), and where each tensor's entries start in the file. The layout is `qwen3vl quantize`'s:
/// the quantized values first (the parts of a fused weight adjacent, [`fused_order`]), then their scales,
/// then the bf16 tensors in spec order — so that the loader uses the quantized weights in place.
fn stored_header(tensors: &[Stored]) -> (Vec<u8>, Vec<Vec<u64>>) {
    let mut meta = vec![("format".to_string(), "pt".to_string())];
    meta.extend(tensors.iter().filter_map(|t| t.meta.clone()));
    // (class, fused order, tensor, entry): class 0 quantized values, 1 their scales, 2 the rest
    let mut order: Vec<(usize, (String, usize), usize, usize)> = Vec::new();
    for (ti, t) in tensors.iter().enumerate() {
        for (ei, _) in t.entries.iter().enumerate() {
            let (class, key) = match t.quant {
                Some(_) => (ei.min(1), fused_order(&t.spec.name)),
                None => (2, (String::new(), ti)),
            };
            order.push((class, key, ti, ei));
        }
        debug_assert!(t.quant.is_some() || t.entries.len() == 1, "{}", t.spec.name);
    }
    order.sort();
    let entries: Vec<(&str, Dtype, &[usize])> = order
        .iter()
        .map(|&(_, _, ti, ei)| {
            let (name, shape, dtype) = &tensors[ti].entries[ei];
            (name.as_str(), *dtype, shape.as_slice())
        })
        .collect();
    let header = safetensors_header(&entries, &meta);
    let mut offsets: Vec<Vec<u64>> = tensors.iter().map(|t| vec![0; t.entries.len()]).collect();
    let mut off = header.len() as u64;
    for (&(_, _, ti, ei), (_, dtype, shape)) in order.iter().zip(&entries) {
        offsets[ti][ei] = off;
        off += shape.iter().map(|&d| d as u64).product::<u64>() * dtype.size() as u64;
    }
    (header, offsets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::init_random::Preset;

    #[test]
    fn shards_respect_limit_and_order() {
        let ts = Preset::Tiny.geometry().tensors();
        let limit = 1_000_000;
        let sizes: Vec<u64> = ts.iter().map(|t| t.bytes()).collect();
        let shards = plan_shards(&sizes, limit);
        assert!(shards.len() > 1);
        let mut next = 0;
        for r in &shards {
            assert_eq!(r.start, next);
            next = r.end;
            let bytes: u64 = ts[r.clone()].iter().map(|t| t.bytes()).sum();
            assert!(bytes <= limit || r.len() == 1, "{bytes}");
        }
        assert_eq!(next, ts.len());
    }

    #[test]
    fn header_is_aligned_and_tiles_data() {
        let ts = Preset::Tiny.geometry().tensors();
        let stored: Vec<Stored> = ts[..5]
            .iter()
            .map(|t| Stored::new(t.clone(), false, 2, None))
            .collect();
        let (h, offsets) = stored_header(&stored);
        let n = u64::from_le_bytes(h[..8].try_into().unwrap()) as usize;
        assert_eq!(n + 8, h.len());
        assert_eq!(h.len() % 64, 0, "the data starts 64-byte aligned");
        let v: Value = serde_json::from_slice(&h[8..]).unwrap();
        let e = &v[ts[1].name.as_str()];
        assert_eq!(e["data_offsets"][0], ts[0].bytes());
        assert_eq!(e["dtype"], "BF16");
        assert_eq!(v["__metadata__"], json!({"format": "pt"}));
        // bf16 tensors in spec order, each where the header says
        assert_eq!(offsets[0], vec![h.len() as u64]);
        assert_eq!(offsets[1], vec![(h.len() as u64) + ts[0].bytes()]);
    }

    /// A quantized checkpoint's layout: every quantized values tensor before every scales tensor before
    /// the bf16 ones, q, k, v (and gate, up) of a layer adjacent in that order: what the loader maps in
    /// place.
    #[test]
    fn quantized_layout_puts_fused_parts_together() {
        let stored: Vec<Stored> = Preset::Tiny
            .geometry()
            .tensors()
            .into_iter()
            .map(|t| Stored::new(t, false, 2, Some(QuantFormat::Q4)))
            .collect();
        let (h, offsets) = stored_header(&stored);
        let find = |suffix: &str| {
            stored
                .iter()
                .position(|t| t.spec.name == format!("model.language_model.layers.0.{suffix}"))
                .unwrap()
        };
        let size = |ti: usize, ei: usize| {
            let (_, shape, dtype) = &stored[ti].entries[ei];
            shape.iter().product::<usize>() as u64 * dtype.size() as u64
        };
        for parts in [
            &[
                "self_attn.q_proj.weight",
                "self_attn.k_proj.weight",
                "self_attn.v_proj.weight",
            ][..],
            &["mlp.gate_proj.weight", "mlp.up_proj.weight"][..],
        ] {
            let ids: Vec<usize> = parts.iter().map(|p| find(p)).collect();
            for ei in [0, 1] {
                for w in ids.windows(2) {
                    assert_eq!(
                        offsets[w[0]][ei] + size(w[0], ei),
                        offsets[w[1]][ei],
                        "{parts:?}"
                    );
                }
            }
        }
        let class_end = |quant: bool, ei: usize| {
            (0..stored.len())
                .filter(|&ti| stored[ti].quant.is_some() == quant && ei < stored[ti].entries.len())
                .map(|ti| (offsets[ti][ei], offsets[ti][ei] + size(ti, ei)))
                .fold((u64::MAX, 0), |(lo, hi), (a, b)| (lo.min(a), hi.max(b)))
        };
        let (values, scales, floats) =
            (class_end(true, 0), class_end(true, 1), class_end(false, 0));
        assert_eq!(values.0, h.len() as u64);
        assert_eq!(values.1, scales.0);
        assert_eq!(scales.1, floats.0);
    }

    #[test]
    fn a_quantized_expert_tensor_is_stored_as_transformers_rows() {
        let ts = Preset::A30bA3.geometry().tensors();
        let gu = ts
            .iter()
            .find(|t| t.name.ends_with("layers.0.mlp.experts.gate_up_proj"))
            .unwrap();
        let st = Stored::new(gu.clone(), false, 48, Some(QuantFormat::Q8));
        assert_eq!((st.rows, st.k), (128 * 1536, 2048));
        assert_eq!(st.released, Some((2048, 1536)));
        assert_eq!(st.entries[0].1, vec![128 * 1536, 2048]);
        assert_eq!(st.entries[1].1, vec![128 * 1536, 64]);
        assert_eq!((st.entries[0].2, st.entries[1].2), (Dtype::U8, Dtype::F32));
        assert_eq!(st.bytes(), 128 * 1536 * (2048 + 64 * 4));
        let (h, _) = stored_header(&[st]);
        let v: Value = serde_json::from_slice(&h[8..]).unwrap();
        assert_eq!(
            v["__metadata__"],
            json!({"format": "pt", "quant:model.language_model.layers.0.mlp.experts.gate_up_proj": "q8"})
        );
    }
}
