//! Writing safetensors files.

use std::fs::File;
use std::path::Path;

use serde_json::Value;

use super::Dtype;
use crate::ModelError;

/// One tensor to write: name, dtype, shape, little-endian bytes.
pub struct OutTensor<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: std::borrow::Cow<'a, [u8]>,
}

impl<'a> OutTensor<'a> {
    /// A view of bytes held elsewhere (the usual way a writer lists the tensors it owns or maps).
    pub fn borrowed(name: &'a str, dtype: Dtype, shape: &[usize], data: &'a [u8]) -> OutTensor<'a> {
        OutTensor {
            name,
            dtype,
            shape: shape.to_vec(),
            data: data.into(),
        }
    }
    pub fn f32(name: &'a str, shape: Vec<usize>, v: &[f32]) -> OutTensor<'a> {
        Self::little_endian(name, Dtype::F32, shape, v, f32::to_le_bytes)
    }
    pub fn i64(name: &'a str, shape: Vec<usize>, v: &[i64]) -> OutTensor<'a> {
        Self::little_endian(name, Dtype::I64, shape, v, i64::to_le_bytes)
    }
    /// A tensor of `v`'s values, each stored as `le` gives its bytes.
    fn little_endian<T: Copy, const N: usize>(
        name: &'a str,
        dtype: Dtype,
        shape: Vec<usize>,
        v: &[T],
        le: fn(T) -> [u8; N],
    ) -> OutTensor<'a> {
        OutTensor {
            name,
            dtype,
            shape,
            data: v.iter().flat_map(|&x| le(x)).collect::<Vec<u8>>().into(),
        }
    }
}

/// Writes a safetensors file (tensors in the given order, the data from a multiple of 64 bytes). Checks that each
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
    }
    let entries: Vec<(&str, Dtype, &[usize])> = tensors
        .iter()
        .map(|t| (t.name, t.dtype, t.shape.as_slice()))
        .collect();
    let header = safetensors_header(&entries, metadata);
    let io = |e: std::io::Error| ModelError::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, File::create(path).map_err(io)?);
    out.write_all(&header).map_err(io)?;
    for t in tensors {
        out.write_all(&t.data).map_err(io)?;
    }
    out.flush().map_err(io)
}

/// Alignment of the data section of the files written here (the header is padded up to it).
pub const DATA_ALIGN: usize = 64;

/// The start of a safetensors file whose tensors (name, dtype, shape) follow one another in the given
/// order: the header's length (u64 LE), then the header (JSON: `__metadata__` with the string entries of
/// `metadata` if there are any, then each tensor's dtype, shape and byte range), padded with spaces so
/// that the data starts at a multiple of [`DATA_ALIGN`] bytes. A writer that streams the data itself (`init-random`) writes this first.
pub fn safetensors_header(
    tensors: &[(&str, Dtype, &[usize])],
    metadata: &[(String, String)],
) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let m: serde_json::Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        header.insert("__metadata__".into(), Value::Object(m));
    }
    let mut off = 0u64;
    for &(name, dtype, shape) in tensors {
        let n = shape.iter().map(|&d| d as u64).product::<u64>() * dtype.size() as u64;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [off, off + n]}),
        );
        off += n;
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).expect("json");
    // the data starts at a multiple of 64 bytes (the length is then a multiple of 8, as the format asks):
    // with tensors whose sizes are multiples of 64 first, a mapped file's weights are cache-line aligned
    // and can be used in place (quantized weights, `Vb::stored_quant`)
    while !(8 + h.len()).is_multiple_of(DATA_ALIGN) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out
}
