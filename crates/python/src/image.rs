//! Images from Python: a path (str or os.PathLike), encoded `bytes`, or a uint8 numpy array H×W×3 (RGB),
//! H×W×4 (RGBA, composited over white like the decoder does) or H×W (gray). PIL images are turned into
//! arrays by the Python layer. The Python object is read while the GIL is held ([`ImageSrc::from_py`]);
//! decoding and preprocessing run later without it ([`ImageSrc::load`]), under the processor's limits.

use std::path::PathBuf;

use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString};
use qwen3vl_engine::{Engine, EngineError};
use qwen3vl_processor::{composite_over_white, ImageInput, RgbImage};

/// One image as given, not yet decoded.
pub(crate) enum ImageSrc {
    Path(PathBuf),
    Bytes(Vec<u8>),
    /// (h, w, 3) RGB pixels.
    Rgb {
        w: u32,
        h: u32,
        rgb: Vec<u8>,
    },
}

impl ImageSrc {
    /// Reads `obj` (the `index`-th image, for messages).
    pub(crate) fn from_py(obj: &Bound<'_, PyAny>, index: usize) -> PyResult<ImageSrc> {
        if obj.cast::<PyString>().is_ok() {
            return Ok(ImageSrc::Path(obj.extract::<PathBuf>()?));
        }
        if let Ok(b) = obj.cast::<PyBytes>() {
            return Ok(ImageSrc::Bytes(b.as_bytes().to_vec()));
        }
        if let Ok(b) = obj.cast::<PyByteArray>() {
            return Ok(ImageSrc::Bytes(b.to_vec()));
        }
        if obj.hasattr("__fspath__")? {
            let p: PathBuf = obj.extract()?;
            return Ok(ImageSrc::Path(p));
        }
        if let Ok(a) = obj.cast::<PyArrayDyn<u8>>() {
            return from_array(&a.readonly().as_array(), index);
        }
        if let Ok(u) = obj.cast::<PyUntypedArray>() {
            return Err(PyTypeError::new_err(format!(
                "image {index}: a numpy image must be uint8 (H, W, 3), (H, W, 4) or (H, W); got dtype {} shape {:?}",
                u.dtype()
                    .str()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                u.shape()
            )));
        }
        let ty = obj
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        Err(PyTypeError::new_err(format!(
            "image {index}: expected a path, bytes, a PIL.Image or a uint8 numpy array, got {ty}"
        )))
    }

    /// Decodes (under the processor's limits) and preprocesses the image for the vision tower.
    pub(crate) fn load(&self, engine: &Engine) -> Result<ImageInput, EngineError> {
        let p = &engine.processor;
        let img = match self {
            ImageSrc::Path(path) => p.load_image_file(path)?,
            ImageSrc::Bytes(b) => p.load_image_bytes(b)?,
            ImageSrc::Rgb { w, h, rgb } => {
                let lim = p.limits();
                if *w > lim.max_width || *h > lim.max_height {
                    return Err(EngineError::Input(format!(
                        "image of {w}x{h} pixels is over the limit of {}x{}",
                        lim.max_width, lim.max_height
                    )));
                }
                RgbImage::from_raw(*w, *h, rgb.clone()).ok_or_else(|| {
                    EngineError::Input(format!("image buffer does not hold {w}x{h} RGB pixels"))
                })?
            }
        };
        Ok(p.preprocess_image(&img)?)
    }
}

fn from_array(a: &numpy::ndarray::ArrayViewD<'_, u8>, index: usize) -> PyResult<ImageSrc> {
    let shape = a.shape();
    let (h, w, c) = match *shape {
        [h, w] => (h, w, 1),
        [h, w, c @ (3 | 4)] => (h, w, c),
        _ => {
            return Err(PyValueError::new_err(format!(
                "image {index}: a numpy image must have shape (H, W, 3), (H, W, 4) or (H, W); got {shape:?}"
            )))
        }
    };
    if h == 0 || w == 0 {
        return Err(PyValueError::new_err(format!(
            "image {index}: empty image of shape {shape:?}"
        )));
    }
    let (Ok(wu), Ok(hu)) = (u32::try_from(w), u32::try_from(h)) else {
        return Err(PyValueError::new_err(format!(
            "image {index}: {w}x{h} pixels is too large"
        )));
    };
    let mut rgb = Vec::with_capacity(h * w * 3);
    // `iter` walks in logical C order whatever the strides (a non-contiguous view is copied right here).
    let mut px = a.iter().copied();
    for _ in 0..h * w {
        let mut p = [0u8; 4];
        for v in p.iter_mut().take(c) {
            *v = px.next().unwrap_or(0);
        }
        let out = match c {
            1 => [p[0]; 3],
            3 => [p[0], p[1], p[2]],
            _ => composite_over_white(p[0], p[1], p[2], p[3]),
        };
        rgb.extend_from_slice(&out);
    }
    Ok(ImageSrc::Rgb { w: wu, h: hu, rgb })
}
