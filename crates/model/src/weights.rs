//! Safetensors checkpoints, memory-mapped: one `model.safetensors` or shards listed by
//! `model.safetensors.index.json`.
//!
//! Every file is validated before any tensor is used (RELIABILITY 1–2): the header length is checked against
//! 100 MB and the file size before anything is read or allocated; every tensor's dtype × shape must equal its
//! byte range (checked multiplication); ranges must tile the data section exactly (no overlap, no gap, nothing
//! past the end, no trailing bytes). Errors name the file and the tensor key.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use qwen3vl_limits::{MAX_TENSORS, MAX_TENSOR_RANK};
use serde_json::Value;

use crate::ModelError;
use qwen3vl_kernels::quant::QuantFormat;

/// safetensors refuses headers above this size; so do we, before reading them.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Element types of the safetensors format. The network reads BF16, F16 and F32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    F8E4M3,
    F8E5M2,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl Dtype {
    fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "BOOL" => Dtype::Bool,
            "U8" => Dtype::U8,
            "I8" => Dtype::I8,
            "F8_E4M3" => Dtype::F8E4M3,
            "F8_E5M2" => Dtype::F8E5M2,
            "I16" => Dtype::I16,
            "U16" => Dtype::U16,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "I32" => Dtype::I32,
            "U32" => Dtype::U32,
            "F32" => Dtype::F32,
            "F64" => Dtype::F64,
            "I64" => Dtype::I64,
            "U64" => Dtype::U64,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E4M3 | Dtype::F8E5M2 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: usize,
    end: usize,
}

/// One validated, memory-mapped safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Arc<Mmap>,
    tensors: HashMap<String, Entry>,
    /// `__metadata__` of the header (string values; others are skipped)
    metadata: HashMap<String, String>,
}

fn st_err(path: &Path, tensor: Option<&str>, msg: impl Into<String>) -> ModelError {
    ModelError::Safetensors {
        file: path.display().to_string(),
        tensor: tensor.map(str::to_string),
        msg: msg.into(),
    }
}

impl SafetensorsFile {
    /// Opens, maps and validates `path`.
    pub fn open(path: &Path) -> Result<SafetensorsFile, ModelError> {
        let file = File::open(path).map_err(|e| ModelError::Io {
            path: path.display().to_string(),
            msg: e.to_string(),
        })?;
        let len = file
            .metadata()
            .map_err(|e| ModelError::Io {
                path: path.display().to_string(),
                msg: e.to_string(),
            })?
            .len();
        if len < 8 {
            return Err(st_err(
                path,
                None,
                format!("truncated: {len} bytes, shorter than the 8-byte header length"),
            ));
        }
        // Safety: the mapping is read-only; the checkpoint must not be modified while the model is loaded (the
        // same contract as every mmap-based loader).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::Io {
            path: path.display().to_string(),
            msg: format!("mmap: {e}"),
        })?;
        let tensors = validate(path, &mmap)?;
        let metadata = read_metadata(&mmap);
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            mmap: Arc::new(mmap),
            tensors,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }
}

/// The string entries of the header's `__metadata__` (the header was validated by `validate`).
fn read_metadata(buf: &[u8]) -> HashMap<String, String> {
    let n = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")) as usize;
    let header: Value = serde_json::from_slice(&buf[8..8 + n]).unwrap_or(Value::Null);
    header
        .get("__metadata__")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Parses the header of `buf` (a whole safetensors file) and checks every rule; returns the tensors.
fn validate(path: &Path, buf: &[u8]) -> Result<HashMap<String, Entry>, ModelError> {
    // 1. Header length: bounded and inside the file, checked before the header is touched.
    let n = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER_LEN {
        return Err(st_err(
            path,
            None,
            format!("header length {n} exceeds the {MAX_HEADER_LEN}-byte limit"),
        ));
    }
    if n > buf.len() as u64 - 8 {
        return Err(st_err(
            path,
            None,
            format!(
                "header length {n} runs past the end of the {}-byte file (truncated?)",
                buf.len()
            ),
        ));
    }
    let data_start = 8 + n as usize;
    let data_len = buf.len() - data_start;

    // 2. The header: a JSON object of name -> {dtype, shape, data_offsets}, plus optional __metadata__.
    //    Read as a list of entries so that a key given twice is refused (a JSON map keeps the last one).
    let entries = header_entries(&buf[8..data_start])
        .map_err(|e| st_err(path, None, format!("header is not valid JSON: {e}")))?
        .ok_or_else(|| st_err(path, None, "header is not a JSON object"))?;
    if entries.len() > MAX_TENSORS {
        return Err(st_err(
            path,
            None,
            format!("{} tensors, over the limit of {MAX_TENSORS}", entries.len()),
        ));
    }
    let mut tensors: HashMap<String, Entry> = HashMap::with_capacity(entries.len());
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    for (name, info) in &entries {
        if !seen.insert(name.as_str()) {
            return Err(st_err(
                path,
                Some(name),
                "the header lists this key more than once",
            ));
        }
        if name == "__metadata__" {
            continue;
        }
        let bad = |msg: String| st_err(path, Some(name), msg);
        let dtype_s = info
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing dtype".into()))?;
        let dtype = Dtype::parse(dtype_s).ok_or_else(|| bad(format!("unknown dtype {dtype_s}")))?;
        let shape = info
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                    .collect::<Option<Vec<usize>>>()
            })
            .ok_or_else(|| bad("shape is not a list of sizes".into()))?;
        if shape.len() > MAX_TENSOR_RANK {
            return Err(bad(format!(
                "shape has {} dimensions, over the limit of {MAX_TENSOR_RANK}",
                shape.len()
            )));
        }
        let offs = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
            .ok_or_else(|| bad("data_offsets is not [start, end]".into()))?;
        let (start, end) = offs;
        if start > end {
            return Err(bad(format!("data_offsets [{start}, {end}] are reversed")));
        }
        // shape × dtype, with overflow checked.
        let nbytes = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .and_then(|e| e.checked_mul(dtype.size()))
            .ok_or_else(|| bad(format!("shape {shape:?} × {dtype_s} overflows")))?;
        if (end - start) as u128 != nbytes as u128 {
            return Err(bad(format!(
                "data_offsets [{start}, {end}] hold {} bytes but shape {shape:?} × {dtype_s} needs {nbytes}",
                end - start
            )));
        }
        if end > data_len as u64 {
            return Err(bad(format!(
                "data_offsets [{start}, {end}] run past the end of the {data_len}-byte data section (truncated?)"
            )));
        }
        tensors.insert(
            name.clone(),
            Entry {
                dtype,
                shape,
                start: data_start + start as usize,
                end: data_start + end as usize,
            },
        );
    }

    // 3. The byte ranges tile the data section exactly: no gap, no overlap, no trailing bytes.
    let mut order: Vec<(&String, &Entry)> = tensors.iter().collect();
    order.sort_by(|a, b| (a.1.start, a.1.end, a.0).cmp(&(b.1.start, b.1.end, b.0)));
    let mut pos = data_start;
    for (name, e) in &order {
        if e.start > pos {
            return Err(st_err(
                path,
                Some(name),
                format!("gap of {} bytes before this tensor's data", e.start - pos),
            ));
        }
        if e.start < pos {
            return Err(st_err(
                path,
                Some(name),
                format!(
                    "data overlaps the previous tensor's by {} bytes",
                    pos - e.start
                ),
            ));
        }
        pos = e.end;
    }
    if pos != buf.len() {
        let last = order.last().map(|(n, _)| n.as_str());
        return Err(st_err(
            path,
            last,
            format!(
                "{} trailing bytes after the last tensor's data",
                buf.len() - pos
            ),
        ));
    }
    Ok(tensors)
}

/// The top-level entries of a JSON object in file order, duplicates kept (None: not an object).
fn header_entries(json: &[u8]) -> Result<Option<Vec<(String, Value)>>, serde_json::Error> {
    use serde::de::{Deserializer, MapAccess, Visitor};
    struct Entries;
    impl<'de> Visitor<'de> for Entries {
        type Value = Option<Vec<(String, Value)>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut v = Vec::new();
            while let Some(e) = m.next_entry::<String, Value>()? {
                v.push(e);
            }
            Ok(Some(v))
        }
    }
    // Valid JSON other than an object is "not an object"; invalid JSON is reported as the parser sees it.
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return serde_json::from_slice::<serde::de::IgnoredAny>(json).map(|_| None);
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    let r = de.deserialize_map(Entries)?;
    de.end()?;
    Ok(r)
}

/// A tensor's location: which mapped file and which bytes.
#[derive(Clone)]
pub struct TensorRef {
    pub key: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    mmap: Arc<Mmap>,
    start: usize,
    end: usize,
}

impl TensorRef {
    pub fn bytes(&self) -> &[u8] {
        &self.mmap[self.start..self.end]
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Drops this tensor's pages from the process's resident set once its contents have been copied
    /// (packed or widened): the mapping is read-only and file-backed, so a later read (an embedding row)
    /// faults the page back in from the file. Without this the whole checkpoint stays resident beside the
    /// packed copy (peak RSS ≈ 2× the checkpoint). Best effort: errors are ignored.
    pub fn release(&self) {
        #[cfg(unix)]
        {
            // Safety: the mapping is a read-only MAP_SHARED file mapping (memmap2 `Mmap::map`); MADV_DONTNEED
            // on it only unmaps the pages, and any later access re-reads identical bytes from the file, so
            // live `&[u8]` views of it stay valid. memmap2 widens the range to whole pages.
            let _ = unsafe {
                self.mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    self.start,
                    self.end - self.start,
                )
            };
        }
    }

    /// The values widened to f32 (any float dtype).
    pub fn to_f32(&self) -> Result<Vec<f32>, ModelError> {
        let b = self.bytes();
        Ok(match self.dtype {
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::BF16 => b
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
            Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            d => {
                return Err(ModelError::Dtype {
                    key: self.key.clone(),
                    msg: format!("{d:?} is not a float dtype (expected BF16, F16 or F32)"),
                })
            }
        })
    }

    /// The raw bf16 bits (only for BF16 tensors); copied if the mapping is not 2-byte aligned.
    pub fn bf16_bits(&self) -> Option<std::borrow::Cow<'_, [u16]>> {
        if self.dtype != Dtype::BF16 {
            return None;
        }
        let b = self.bytes();
        if cfg!(target_endian = "little") && (b.as_ptr() as usize).is_multiple_of(2) {
            // Safety: aligned, length is even (validated shape × 2), any bit pattern is a valid u16.
            let s = unsafe { std::slice::from_raw_parts(b.as_ptr() as *const u16, b.len() / 2) };
            Some(std::borrow::Cow::Borrowed(s))
        } else {
            Some(std::borrow::Cow::Owned(
                b.chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ))
        }
    }

    /// Row `r` of a 2-D float tensor widened into `out` (embedding lookups straight from the mapping).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let cols = out.len();
        let sz = self.dtype.size();
        let b = &self.bytes()[r * cols * sz..(r + 1) * cols * sz];
        match self.dtype {
            Dtype::F32 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Dtype::BF16 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
                }
            }
            Dtype::F16 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
            // Checked at load (`Weights::float`).
            _ => out.fill(f32::NAN),
        }
    }
}

/// All tensors of a checkpoint directory.
pub struct Weights {
    files: Vec<SafetensorsFile>,
    /// key -> index into `files`
    index: HashMap<String, usize>,
}

impl Weights {
    /// `dir/model.safetensors`, or the shards of `dir/model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Weights, ModelError> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        if index_path.exists() {
            let limit = qwen3vl_limits::MAX_CONFIG_BYTES;
            let io = |msg: String| ModelError::Io {
                path: index_path.display().to_string(),
                msg,
            };
            let mut text = String::new();
            {
                use std::io::Read;
                File::open(&index_path)
                    .map_err(|e| io(e.to_string()))?
                    .take(limit + 1)
                    .read_to_string(&mut text)
                    .map_err(|e| io(e.to_string()))?;
            }
            if text.len() as u64 > limit {
                return Err(io(format!("the file is over the limit of {limit} bytes")));
            }
            let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::Io {
                path: index_path.display().to_string(),
                msg: format!("not valid JSON: {e}"),
            })?;
            let map = v
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| ModelError::Io {
                    path: index_path.display().to_string(),
                    msg: "no weight_map object".into(),
                })?;
            let mut shard_names: Vec<&str> = Vec::new();
            let mut wanted: Vec<(&str, &str)> = Vec::new();
            for (key, f) in map {
                let f = f.as_str().ok_or_else(|| ModelError::Io {
                    path: index_path.display().to_string(),
                    msg: format!("weight_map[{key}] is not a file name"),
                })?;
                if f.contains('/') || f.contains('\\') || f == ".." {
                    return Err(ModelError::Io {
                        path: index_path.display().to_string(),
                        msg: format!("weight_map[{key}] = {f:?} is not a plain file name"),
                    });
                }
                if !shard_names.contains(&f) {
                    shard_names.push(f);
                }
                wanted.push((key, f));
            }
            shard_names.sort();
            let files = shard_names
                .iter()
                .map(|f| SafetensorsFile::open(&dir.join(f)))
                .collect::<Result<Vec<_>, _>>()?;
            let mut index = HashMap::new();
            for (fi, f) in files.iter().enumerate() {
                for k in f.keys() {
                    if let Some(prev) = index.insert(k.to_string(), fi) {
                        return Err(st_err(
                            f.path(),
                            Some(k),
                            format!("also present in {}", files[prev].path().display()),
                        ));
                    }
                }
            }
            for (key, f) in wanted {
                let fi = shard_names.iter().position(|s| *s == f).expect("listed");
                if index.get(key) != Some(&fi) {
                    return Err(ModelError::MissingTensor {
                        key: key.to_string(),
                        msg: format!("model.safetensors.index.json says it is in {f}, which does not hold it"),
                    });
                }
            }
            Ok(Weights { files, index })
        } else if single.exists() {
            let f = SafetensorsFile::open(&single)?;
            let index = f.keys().map(|k| (k.to_string(), 0)).collect();
            Ok(Weights {
                files: vec![f],
                index,
            })
        } else {
            Err(ModelError::Io {
                path: dir.display().to_string(),
                msg: "neither model.safetensors nor model.safetensors.index.json is present".into(),
            })
        }
    }

    /// The safetensors files, in load order.
    pub fn file_paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path())
    }

    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// Total bytes of tensor data (for progress reporting).
    pub fn total_bytes(&self) -> u64 {
        self.files
            .iter()
            .flat_map(|f| f.tensors.values())
            .map(|e| (e.end - e.start) as u64)
            .sum()
    }

    /// The tensor `key`, which must have `shape` and a float dtype.
    pub fn float(&self, key: &str, shape: &[usize]) -> Result<TensorRef, ModelError> {
        let t = self.raw(key)?;
        if t.shape != shape {
            return Err(ModelError::Shape {
                key: key.to_string(),
                expected: shape.to_vec(),
                got: t.shape,
            });
        }
        if !matches!(t.dtype, Dtype::BF16 | Dtype::F16 | Dtype::F32) {
            return Err(ModelError::Dtype {
                key: key.to_string(),
                msg: format!("{:?} is not supported (BF16, F16 or F32)", t.dtype),
            });
        }
        Ok(t)
    }

    /// Every tensor key of the checkpoint.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// The value of `name` in the `__metadata__` of the file holding tensor `key`.
    pub fn metadata_of(&self, key: &str, name: &str) -> Option<&str> {
        let fi = *self.index.get(key)?;
        self.files[fi].metadata.get(name).map(String::as_str)
    }

    /// The tensor `key` whatever its dtype and shape (checked by the caller).
    pub fn raw(&self, key: &str) -> Result<TensorRef, ModelError> {
        let fi = *self
            .index
            .get(key)
            .ok_or_else(|| ModelError::MissingTensor {
                key: key.to_string(),
                msg: "not in the checkpoint".into(),
            })?;
        let f = &self.files[fi];
        let e = &f.tensors[key];
        Ok(TensorRef {
            key: key.to_string(),
            dtype: e.dtype,
            shape: e.shape.clone(),
            mmap: f.mmap.clone(),
            start: e.start,
            end: e.end,
        })
    }

    /// The file (its name in the checkpoint directory) that holds tensor `key`.
    pub fn file_of(&self, key: &str) -> Option<&Path> {
        self.index.get(key).map(|&fi| self.files[fi].path())
    }

    /// The metadata entry naming the quantization format of tensor `key` in a quantized checkpoint.
    pub fn quant_meta_key(key: &str) -> String {
        format!("quant:{key}")
    }

    /// Whether `key` is stored quantized (U8).
    pub fn is_quantized(&self, key: &str) -> bool {
        self.index
            .get(key)
            .is_some_and(|&fi| self.files[fi].tensors[key].dtype == Dtype::U8)
    }

    /// Tensor `key` of an (n, k) weight stored quantized: U8 values (n, row bytes) with the format named by
    /// the header metadata `quant:{key}`, and F32 scales `{key}_scale` (n, blocks). Errors name the tensor.
    pub fn quantized(
        &self,
        key: &str,
        n: usize,
        k: usize,
    ) -> Result<(QuantFormat, TensorRef, Vec<f32>), ModelError> {
        let t = self.raw(key)?;
        let meta = Weights::quant_meta_key(key);
        let name = self
            .metadata_of(key, &meta)
            .ok_or_else(|| ModelError::Dtype {
                key: key.to_string(),
                msg: format!(
                    "U8 without a quantization format (no {meta:?} in the header metadata)"
                ),
            })?;
        let format = QuantFormat::parse(name).ok_or_else(|| ModelError::Dtype {
            key: key.to_string(),
            msg: format!(
                "quantization format {name:?} is not known (expected one of: {})",
                QuantFormat::ALL.map(|f| f.name()).join(", ")
            ),
        })?;
        let expected = [n, format.row_bytes(k)];
        if t.shape != expected {
            return Err(ModelError::Shape {
                key: key.to_string(),
                expected: expected.to_vec(),
                got: t.shape.clone(),
            });
        }
        let skey = format!("{key}_scale");
        let st = self.raw(&skey)?;
        let sexp = [n, format.row_scales(k)];
        if st.shape != sexp {
            return Err(ModelError::Shape {
                key: skey,
                expected: sexp.to_vec(),
                got: st.shape.clone(),
            });
        }
        if st.dtype != Dtype::F32 {
            return Err(ModelError::Dtype {
                key: skey,
                msg: format!("{:?}, expected F32 scales", st.dtype),
            });
        }
        let d = st.to_f32()?;
        if let Some(i) = d.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
            let nb = sexp[1].max(1);
            return Err(ModelError::Dtype {
                key: skey,
                msg: format!(
                    "scale of row {} block {} is {} (scales must be finite and >= 0)",
                    i / nb,
                    i % nb,
                    d[i]
                ),
            });
        }
        Ok((format, t, d))
    }

    /// A float tensor of `shape` widened to f32.
    pub fn f32(&self, key: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        self.float(key, shape)?.to_f32()
    }
}

impl Dtype {
    /// The name in a safetensors header.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }
}

/// One tensor to write: name, dtype, shape, little-endian bytes.
pub struct OutTensor<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: std::borrow::Cow<'a, [u8]>,
}

impl<'a> OutTensor<'a> {
    pub fn f32(name: &'a str, shape: Vec<usize>, v: &[f32]) -> OutTensor<'a> {
        OutTensor {
            name,
            dtype: Dtype::F32,
            shape,
            data: v
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        }
    }
    pub fn i64(name: &'a str, shape: Vec<usize>, v: &[i64]) -> OutTensor<'a> {
        OutTensor {
            name,
            dtype: Dtype::I64,
            shape,
            data: v
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        }
    }
}

/// Writes a safetensors file (tensors in the given order, header padded to 8 bytes). Checks that each
/// tensor's bytes match its shape × dtype.
pub fn write_safetensors(path: &Path, tensors: &[OutTensor]) -> Result<(), ModelError> {
    write_safetensors_with_metadata(path, tensors, &[])
}

/// [`write_safetensors`] with string entries in the header's `__metadata__` (none: no `__metadata__`).
/// The data is streamed to the file, not assembled in memory.
pub fn write_safetensors_with_metadata(
    path: &Path,
    tensors: &[OutTensor],
    metadata: &[(String, String)],
) -> Result<(), ModelError> {
    use std::io::Write;
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let m: serde_json::Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        header.insert("__metadata__".into(), Value::Object(m));
    }
    let mut off = 0usize;
    for t in tensors {
        let n: usize = t.shape.iter().product::<usize>() * t.dtype.size();
        if n != t.data.len() {
            return Err(ModelError::Input(format!(
                "{}: {} bytes for shape {:?} × {}",
                t.name,
                t.data.len(),
                t.shape,
                t.dtype.name()
            )));
        }
        header.insert(
            t.name.to_string(),
            serde_json::json!({"dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [off, off + n]}),
        );
        off += n;
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).expect("json");
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let io = |e: std::io::Error| ModelError::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, File::create(path).map_err(io)?);
    out.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
    out.write_all(&h).map_err(io)?;
    for t in tensors {
        out.write_all(&t.data).map_err(io)?;
    }
    out.flush().map_err(io)
}
