//! One safetensors file, memory-mapped and validated before any tensor is used (RELIABILITY 1–2): the
//! header length is checked against 100 MB and the file size before anything is read or allocated; every
//! tensor's dtype × shape must equal its byte range (checked multiplication); ranges must tile the data
//! section exactly (no overlap, no gap, nothing past the end, no trailing bytes). Errors name the file and
//! the tensor key.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use qwen3vl_limits::{MAX_TENSORS, MAX_TENSOR_RANK};
use serde_json::Value;

use super::Dtype;
use crate::ModelError;

/// safetensors refuses headers above this size; so do we, before reading them.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub(super) dtype: Dtype,
    pub(super) shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub(super) start: usize,
    pub(super) end: usize,
}

/// One validated, memory-mapped safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    pub(super) mmap: Arc<Mmap>,
    pub(super) tensors: HashMap<String, Entry>,
    /// `__metadata__` of the header (string values; others are skipped)
    pub(super) metadata: HashMap<String, String>,
}

pub(super) fn st_err(path: &Path, tensor: Option<&str>, msg: impl Into<String>) -> ModelError {
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
