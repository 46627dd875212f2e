//! Safetensors checkpoints, memory-mapped: one `model.safetensors` or shards listed by
//! `model.safetensors.index.json`.
//!
//! `file.rs` validates each file before any tensor is used; [`Weights`] joins the files of a checkpoint and
//! hands out tensors by key (float ones here, quantized ones in `quantized.rs`); `write.rs` writes files.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use serde_json::Value;

use crate::ModelError;

mod dtype;
mod file;
mod quantized;
mod tensor;
mod write;

pub use dtype::Dtype;
use file::st_err;
pub use file::{SafetensorsFile, MAX_HEADER_LEN};
pub use quantized::StoredQuant;
pub use tensor::TensorRef;
pub use write::{
    safetensors_header, write_safetensors, write_safetensors_with_metadata, OutTensor,
};

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

    /// A float tensor of `shape` widened to f32.
    pub fn f32(&self, key: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        self.float(key, shape)?.to_f32()
    }
}
