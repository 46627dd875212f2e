//! Image decoding to RGB uint8, the way the reference pipeline sees a file (spec 6.2 step 1 and its audit):
//! PIL opens it, `ImageOps.exif_transpose` applies the EXIF orientation, and the processor composites any
//! alpha over white (`PIL.Image.alpha_composite`) or else calls `convert("RGB")`.
//!
//! Every decode runs under [`ImageLimits`]: the header's size is checked before pixels are allocated.
//! JPEG goes through libjpeg-turbo's decoder (see `jpeg.rs`); PNG, GIF, WebP and BMP through the `image` crate.

use crate::{jpeg, ProcessorError};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, RgbImage};
use std::io::Cursor;

/// Budgets for one image decode (RELIABILITY 4, 7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest accepted width in pixels.
    pub max_width: u32,
    /// Largest accepted height in pixels.
    pub max_height: u32,
    /// Largest pixel buffer the decoder may allocate, in bytes (width · height · bytes per pixel).
    pub max_alloc_bytes: u64,
    /// Largest accepted encoded file, in bytes.
    pub max_file_bytes: u64,
}

impl Default for ImageLimits {
    /// Generous for real photos (a 100-megapixel camera frame fits), far below a decompression bomb.
    fn default() -> Self {
        ImageLimits {
            max_width: 16384,
            max_height: 16384,
            max_alloc_bytes: 1 << 30,
            max_file_bytes: 256 << 20,
        }
    }
}

impl ImageLimits {
    /// Check a header's size before decoding (RGB at 16 bits per channel and alpha: 8 bytes per pixel worst case).
    pub(crate) fn check(
        &self,
        format: &str,
        width: u32,
        height: u32,
    ) -> Result<(), ProcessorError> {
        if width == 0 || height == 0 {
            return Err(ProcessorError::Image(format!(
                "{format}: zero-size image ({width}x{height})"
            )));
        }
        if width > self.max_width || height > self.max_height {
            return Err(ProcessorError::Image(format!(
                "{format}: image is {width}x{height}, over the limit of {}x{} (ImageLimits max_width/max_height)",
                self.max_width, self.max_height
            )));
        }
        let bytes = width as u64 * height as u64 * 4;
        if bytes > self.max_alloc_bytes {
            return Err(ProcessorError::Image(format!(
                "{format}: a {width}x{height} image needs {bytes} bytes, over the limit of {} (ImageLimits max_alloc_bytes)",
                self.max_alloc_bytes
            )));
        }
        Ok(())
    }
}

/// Read and decode an image file under `limits`: its size is checked before it is read, its header's
/// before pixels are allocated. Errors name the file. (No checkpoint is needed: a command line checks its
/// image files before it loads a model.)
pub fn read_image_file(
    path: &std::path::Path,
    limits: &ImageLimits,
) -> Result<RgbImage, ProcessorError> {
    let meta = std::fs::metadata(path).map_err(|source| ProcessorError::Io {
        path: path.into(),
        source,
    })?;
    if meta.len() > limits.max_file_bytes {
        return Err(ProcessorError::Image(format!(
            "{}: file is {} bytes, over the limit of {} (ImageLimits max_file_bytes)",
            path.display(),
            meta.len(),
            limits.max_file_bytes
        )));
    }
    let bytes = std::fs::read(path).map_err(|source| ProcessorError::Io {
        path: path.into(),
        source,
    })?;
    decode_rgb(&bytes, limits).map_err(|e| {
        ProcessorError::Image(format!(
            "{}: {}",
            path.display(),
            e.to_string().trim_start_matches("image: ")
        ))
    })
}

/// Decode an encoded image to RGB (EXIF orientation applied, alpha composited over white).
pub fn decode_rgb(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, ProcessorError> {
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(ProcessorError::Image(format!(
            "file is {} bytes, over the limit of {} (ImageLimits max_file_bytes)",
            bytes.len(),
            limits.max_file_bytes
        )));
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        let d = jpeg::decode(bytes, limits)?;
        let img = RgbImage::from_raw(d.width, d.height, d.rgb)
            .ok_or_else(|| ProcessorError::Image("JPEG: pixel buffer size mismatch".into()))?;
        let o = d
            .orientation
            .and_then(|v| Orientation::from_exif(v as u8))
            .unwrap_or(Orientation::NoTransforms);
        return Ok(orient(img, o));
    }
    let format = sniff(bytes)?;
    let name = format!("{format:?}").to_uppercase();
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    // Width and height are checked below from the header (so the error can name them); the allocation
    // budget stays with the decoder as a second guard.
    let mut lim = image::Limits::default();
    lim.max_image_width = None;
    lim.max_image_height = None;
    lim.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(lim);
    let mut dec = reader.into_decoder().map_err(|e| image_err(&name, e))?;
    let (w, h) = dec.dimensions();
    limits.check(&name, w, h)?;
    let o = dec.orientation().unwrap_or(Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(dec).map_err(|e| image_err(&name, e))?;
    let rgb = to_rgb_like_pil(img).map_err(|m| ProcessorError::Image(format!("{name}: {m}")))?;
    Ok(orient(rgb, o))
}

fn image_err(format: &str, e: image::ImageError) -> ProcessorError {
    let what = match &e {
        image::ImageError::Limits(_) => "over the decode limits",
        image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "truncated file"
        }
        image::ImageError::Decoding(_) => "corrupt or truncated file",
        image::ImageError::Unsupported(_) => "unsupported variant",
        _ => "cannot decode",
    };
    ProcessorError::Image(format!("{format}: {what}: {e}"))
}

fn sniff(bytes: &[u8]) -> Result<image::ImageFormat, ProcessorError> {
    use image::ImageFormat as F;
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Ok(F::Png)
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Ok(F::Gif)
    } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Ok(F::WebP)
    } else if bytes.starts_with(b"BM") {
        Ok(F::Bmp)
    } else if bytes.is_empty() {
        Err(ProcessorError::Image("empty file".into()))
    } else {
        let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Err(ProcessorError::Image(format!(
            "unrecognised image format (first bytes {}); supported: JPEG, PNG, GIF, WebP, BMP",
            head.join(" ")
        )))
    }
}

fn orient(img: RgbImage, o: Orientation) -> RgbImage {
    if o == Orientation::NoTransforms {
        return img;
    }
    let mut d = DynamicImage::ImageRgb8(img);
    d.apply_orientation(o);
    d.into_rgb8()
}

/// PIL's `Image.alpha_composite(white, src)` for one pixel, as in Pillow's AlphaComposite.c (integer math,
/// 7 extra bits of precision, divisions by 255 done by shifts).
#[inline]
pub fn composite_over_white(r: u8, g: u8, b: u8, a: u8) -> [u8; 3] {
    if a == 0 {
        return [255, 255, 255];
    }
    const PREC: u32 = 7;
    let (da, dc) = (255u32, 255u32);
    let sa = a as u32;
    let blend = da * (255 - sa);
    let outa255 = sa * 255 + blend;
    let coef1 = sa * 255 * 255 * (1 << PREC) / outa255;
    let coef2 = 255 * (1 << PREC) - coef1;
    let div255 = |v: u32| ((v >> 8) + v) >> 8;
    let ch = |s: u8| div255(s as u32 * coef1 + dc * coef2 + (0x80 << PREC)) >> PREC;
    [ch(r) as u8, ch(g) as u8, ch(b) as u8]
}

/// Convert a decoded image to RGB8 the way PIL + the processor do (`convert_to_rgb`):
/// - with alpha (RGBA, LA, palette or grey with tRNS, which the decoder expands to an alpha channel):
///   composite over white;
/// - grey: replicated; 16-bit grey is PIL mode `I;16`, whose convert('RGB') clamps values to 255;
/// - 16-bit colour or grey+alpha: PIL keeps the high byte of each sample.
fn to_rgb_like_pil(img: DynamicImage) -> Result<RgbImage, String> {
    let (w, h) = (img.width(), img.height());
    let mut out = Vec::with_capacity(w as usize * h as usize * 3);
    match img {
        DynamicImage::ImageRgb8(i) => return Ok(i),
        DynamicImage::ImageLuma8(i) => i
            .as_raw()
            .iter()
            .for_each(|&l| out.extend_from_slice(&[l, l, l])),
        DynamicImage::ImageLumaA8(i) => i
            .as_raw()
            .chunks_exact(2)
            .for_each(|p| out.extend_from_slice(&composite_over_white(p[0], p[0], p[0], p[1]))),
        DynamicImage::ImageRgba8(i) => i
            .as_raw()
            .chunks_exact(4)
            .for_each(|p| out.extend_from_slice(&composite_over_white(p[0], p[1], p[2], p[3]))),
        DynamicImage::ImageLuma16(i) => i.as_raw().iter().for_each(|&l| {
            let v = l.min(255) as u8;
            out.extend_from_slice(&[v, v, v])
        }),
        DynamicImage::ImageLumaA16(i) => i.as_raw().chunks_exact(2).for_each(|p| {
            let (l, a) = ((p[0] >> 8) as u8, (p[1] >> 8) as u8);
            out.extend_from_slice(&composite_over_white(l, l, l, a))
        }),
        DynamicImage::ImageRgb16(i) => i.as_raw().iter().for_each(|&v| out.push((v >> 8) as u8)),
        DynamicImage::ImageRgba16(i) => i.as_raw().chunks_exact(4).for_each(|p| {
            let c = |v: u16| (v >> 8) as u8;
            out.extend_from_slice(&composite_over_white(c(p[0]), c(p[1]), c(p[2]), c(p[3])))
        }),
        other => return Err(format!("pixel format {:?} is not supported", other.color())),
    }
    RgbImage::from_raw(w, h, out).ok_or_else(|| "pixel buffer size mismatch".to_string())
}
