//! `smart_resize` (spec 6.2 step 2) and the exact torchvision uint8 bicubic antialias resize (spec 6.3).
//!
//! The filter coefficients are computed here in f64 exactly as ATen's `_compute_indices_min_size_weights_aa`
//! and `_compute_index_ranges_int16_weights` do; the passes run as `Kernels::resample_{rows,cols}_u8`.

use crate::ProcessorError;
use qwen3vl_kernels::resample::Taps;
use qwen3vl_kernels::Kernels;

/// Largest allowed max(H, W) / min(H, W) (RELIABILITY 6).
pub const MAX_ASPECT_RATIO: f64 = 200.0;

/// Python's `round()` on f64: round half to even.
fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// `smart_resize(height, width, factor, min_pixels, max_pixels)` of the Qwen2-VL image processor, in f64 like
/// Python. Returns (h̄, w̄), multiples of `factor`.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize), ProcessorError> {
    if height == 0 || width == 0 {
        return Err(ProcessorError::Image(format!(
            "zero-size image ({width}x{height})"
        )));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let ratio = h.max(w) / h.min(w);
    if ratio > MAX_ASPECT_RATIO {
        return Err(ProcessorError::AspectRatio {
            height,
            width,
            ratio,
        });
    }
    let mut h_bar = round_half_even(h / f) * f;
    let mut w_bar = round_half_even(w / f) * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// The filter of one pass, owned.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    pub start: Vec<u32>,
    pub count: Vec<u32>,
    pub weights: Vec<i16>,
    pub stride: usize,
    pub prec: u32,
}

impl Filter {
    pub fn taps(&self) -> Taps<'_> {
        Taps {
            start: &self.start,
            count: &self.count,
            weights: &self.weights,
            stride: self.stride,
            prec: self.prec,
        }
    }
}

/// Keys cubic, a = -0.5, in ATen's operation order (`aa_filter` of UpSampleKernel.cpp).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// Fixed-point antialias bicubic filter for `in_len` -> `out_len` (spec 6.3).
pub fn bicubic_aa_filter(in_len: usize, out_len: usize) -> Filter {
    // support = (interp_size / 2) * scale for downscaling, interp_size / 2 otherwise (interp_size 4).
    let scale = in_len as f64 / out_len as f64;
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let stride = (support.ceil() as usize) * 2 + 1;
    let mut start = Vec::with_capacity(out_len);
    let mut count = Vec::with_capacity(out_len);
    let mut wf = vec![0f64; out_len * stride];
    let mut wt_max = 0f64;
    for i in 0..out_len {
        let center = scale * (i as f64 + 0.5);
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xsize = ((center + support + 0.5) as i64).min(in_len as i64) - xmin;
        let xsize = xsize.clamp(0, stride as i64) as usize;
        let w = &mut wf[i * stride..i * stride + xsize];
        let mut total = 0f64;
        for (j, wj) in w.iter_mut().enumerate() {
            *wj = bicubic((j as f64 + xmin as f64 - center + 0.5) * invscale);
            total += *wj;
        }
        if total != 0.0 {
            for wj in w.iter_mut() {
                *wj /= total;
                wt_max = wt_max.max(*wj);
            }
        }
        start.push(xmin as u32);
        count.push(xsize as u32);
    }
    // Precision: the largest p < 22 with int(0.5 + wt_max · 2^(p+1)) < 2^15 stops the loop.
    let mut prec = 0u32;
    while prec < 22 {
        let next = (0.5 + wt_max * (1u64 << (prec + 1)) as f64) as i64;
        if next >= 1 << 15 {
            break;
        }
        prec += 1;
    }
    let weights = wf
        .iter()
        .map(|&w| {
            let v = w * (1u64 << prec) as f64;
            (if v < 0.0 { -0.5 + v } else { 0.5 + v }) as i16
        })
        .collect();
    Filter {
        start,
        count,
        weights,
        stride,
        prec: prec.max(1),
    }
}

/// Resize an RGB uint8 picture (h, w, 3) to (out_h, out_w, 3): horizontal pass, then vertical; a pass whose
/// size does not change is skipped (torchvision's order).
pub fn resize_rgb(
    k: &Kernels,
    src: &[u8],
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
) -> Result<Vec<u8>, ProcessorError> {
    let horiz = if out_w != w {
        let f = bicubic_aa_filter(w, out_w);
        let mut tmp = crate::alloc::big_vec::<u8>(h * out_w * 3);
        tmp.resize(h * out_w * 3, 0);
        k.resample_rows_u8(src, h, w, 3, &f.taps(), &mut tmp)?;
        Some(tmp)
    } else {
        None
    };
    let mid: &[u8] = horiz.as_deref().unwrap_or(src);
    if out_h != h {
        let f = bicubic_aa_filter(h, out_h);
        let mut out = crate::alloc::big_vec::<u8>(out_h * out_w * 3);
        out.resize(out_h * out_w * 3, 0);
        k.resample_cols_u8(mid, h, out_w * 3, &f.taps(), &mut out)?;
        Ok(out)
    } else {
        Ok(horiz.unwrap_or_else(|| src.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_matches_the_spec_table() {
        // Spec 6.2 (factor 32, min 65536, max 16777216).
        let cases = [
            ((336, 640), (320, 640)),
            ((368, 640), (384, 640)),
            ((400, 640), (384, 640)),
            ((300, 517), (288, 512)),
            ((1365, 2048), (1376, 2048)),
            ((20, 30), (224, 320)),
            ((8000, 6000), (4704, 3520)),
        ];
        for ((h, w), want) in cases {
            assert_eq!(
                smart_resize(h, w, 32, 65536, 16777216).unwrap(),
                want,
                "{h}x{w}"
            );
        }
    }

    #[test]
    fn smart_resize_refuses_extreme_aspect_and_zero() {
        assert!(smart_resize(16, 3200, 32, 65536, 16777216).is_ok()); // exactly 200
        let e = smart_resize(16, 3201, 32, 65536, 16777216).unwrap_err();
        assert!(e.to_string().contains("aspect ratio"), "{e}");
        assert!(smart_resize(0, 10, 32, 65536, 16777216).is_err());
    }

    #[test]
    fn round_half_even_like_python() {
        assert_eq!(round_half_even(10.5), 10.0);
        assert_eq!(round_half_even(11.5), 12.0);
        assert_eq!(round_half_even(0.5), 0.0);
        assert_eq!(round_half_even(2.4), 2.0);
        assert_eq!(round_half_even(2.6), 3.0);
    }

    #[test]
    fn filter_of_identity_and_upscale() {
        // Upscaling 2 -> 4: support 2, weights sum to 2^prec (within rounding), prec as torchvision.
        let f = bicubic_aa_filter(2, 4);
        assert_eq!(f.stride, 5);
        for i in 0..4 {
            let n = f.count[i] as usize;
            let s: i32 = f.weights[i * 5..i * 5 + n].iter().map(|&w| w as i32).sum();
            assert!((s - (1 << f.prec)).abs() <= 2, "output {i}: sum {s}");
        }
        // Downscaling 8 -> 2: scale 4, support 8, every output sees all 8 inputs but at most 8 taps.
        let f = bicubic_aa_filter(8, 2);
        assert_eq!(f.stride, 17);
        assert_eq!(f.start, vec![0, 0]);
        assert_eq!(f.count, vec![8, 8]);
    }
}
