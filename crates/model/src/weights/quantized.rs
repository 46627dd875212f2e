//! Reading a weight stored quantized (the layout `qwen3vl quantize` writes): the format from the header
//! metadata, the values and the scales, each checked against the weight's shape.

use qwen3vl_kernels::quant::QuantFormat;

use super::{Dtype, TensorRef, Weights};
use crate::ModelError;

impl Weights {
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
    /// the header metadata `quant:{key}`, and F32 scales `{key}_scale` (n, blocks), checked (finite, ≥ 0)
    /// and returned both as stored and read. Errors name the tensor.
    pub fn quantized(&self, key: &str, n: usize, k: usize) -> Result<StoredQuant, ModelError> {
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
        Ok(StoredQuant {
            format,
            values: t,
            scales: st,
            d,
        })
    }
}

/// A weight stored quantized ([`Weights::quantized`]).
pub struct StoredQuant {
    pub format: QuantFormat,
    /// U8 (n, row bytes)
    pub values: TensorRef,
    /// F32 (n, row scales), as stored
    pub scales: TensorRef,
    /// the scales read (checked finite and ≥ 0)
    pub d: Vec<f32>,
}
