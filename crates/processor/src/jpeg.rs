//! JPEG decoding with libjpeg-turbo's decoder (the one PIL uses), via `mozjpeg-sys` built from source.
//!
//! Why not the `image` crate's decoder (zune-jpeg): it is not bit-identical to libjpeg-turbo (differences of up
//! to 5 levels on 4:2:0 files and up to 3 on 4:4:4 ones), and pixel_values must match the reference exactly.
//! mozjpeg's decompressor is libjpeg-turbo's (ISLOW IDCT, fancy upsampling, same YCbCr tables), so it gives
//! PIL's bytes. It is built here without SIMD (no NASM needed); the C paths compute the same integers.
//!
//! libjpeg reports fatal errors through `error_exit`, which must not return: ours unwinds (the library is
//! compiled with `-fexceptions` by the `unwinding` feature) and `decode` catches it. Warnings are ignored as PIL
//! ignores them, except "Premature end of JPEG file": PIL refuses truncated files, and so do we.

use crate::decode::ImageLimits;
use crate::ProcessorError;
use mozjpeg_sys as ffi;
use std::os::raw::{c_int, c_ulong};

/// The decoded picture before EXIF orientation: RGB (grey is replicated, like PIL's convert('RGB')).
pub(crate) struct Decoded {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
    /// EXIF orientation tag (1..=8) of the first APP1 "Exif" segment, if any.
    pub orientation: Option<u16>,
}

struct Panic(String);

unsafe extern "C-unwind" fn error_exit(cinfo: &mut ffi::jpeg_common_struct) {
    let msg = format_message(cinfo);
    std::panic::resume_unwind(Box::new(Panic(msg)));
}

unsafe extern "C-unwind" fn emit_message(cinfo: &mut ffi::jpeg_common_struct, level: c_int) {
    let code = (*cinfo.err).msg_code;
    if level < 0 && code == ffi::JWRN_JPEG_EOF as c_int {
        std::panic::resume_unwind(Box::new(Panic(
            "truncated file (premature end of JPEG data)".into(),
        )));
    }
}

unsafe fn format_message(cinfo: &mut ffi::jpeg_common_struct) -> String {
    let err = &*cinfo.err;
    match err.format_message {
        Some(f) => {
            let buf = [0u8; 80];
            f(cinfo, &buf);
            let end = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end]).into_owned()
        }
        None => format!("libjpeg error code {}", err.msg_code),
    }
}

/// Owns the libjpeg state; destroys it on every exit path (including unwinding).
struct State {
    cinfo: Box<ffi::jpeg_decompress_struct>,
    _err: Box<ffi::jpeg_error_mgr>,
}

impl Drop for State {
    fn drop(&mut self) {
        unsafe { ffi::jpeg_destroy_decompress(&mut self.cinfo) };
    }
}

/// Decode a JPEG file's bytes under `limits`; the size is checked from the header before any pixel buffer
/// is allocated.
pub(crate) fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<Decoded, ProcessorError> {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode_inner(bytes, limits)));
    match r {
        Ok(r) => r,
        Err(payload) => match payload.downcast::<Panic>() {
            Ok(p) => Err(ProcessorError::Image(format!("JPEG: {}", p.0))),
            Err(other) => std::panic::resume_unwind(other),
        },
    }
}

fn decode_inner(bytes: &[u8], limits: &ImageLimits) -> Result<Decoded, ProcessorError> {
    unsafe {
        let mut err: Box<ffi::jpeg_error_mgr> = Box::new(std::mem::zeroed());
        ffi::jpeg_std_error(&mut err);
        err.error_exit = Some(error_exit);
        err.emit_message = Some(emit_message);
        let mut cinfo: Box<ffi::jpeg_decompress_struct> = Box::new(std::mem::zeroed());
        cinfo.common.err = &mut *err;
        ffi::jpeg_create_decompress(&mut *cinfo);
        let mut st = State { cinfo, _err: err };
        let cinfo = &mut *st.cinfo;
        ffi::jpeg_mem_src(cinfo, bytes.as_ptr(), bytes.len() as c_ulong);
        ffi::jpeg_save_markers(cinfo, ffi::jpeg_marker::APP0 as c_int + 1, 0xFFFF);
        ffi::jpeg_read_header(cinfo, 1);

        let (w, h) = (cinfo.image_width, cinfo.image_height);
        limits.check("JPEG", w, h)?;
        let orientation = exif_orientation_from_markers(cinfo.marker_list);
        // Four-component files (CMYK, and YCCK which libjpeg converts to CMYK) are read as CMYK and
        // converted the way PIL does; everything else is converted to RGB by libjpeg.
        let cmyk = match cinfo.jpeg_color_space {
            ffi::J_COLOR_SPACE::JCS_GRAYSCALE
            | ffi::J_COLOR_SPACE::JCS_YCbCr
            | ffi::J_COLOR_SPACE::JCS_RGB => false,
            ffi::J_COLOR_SPACE::JCS_CMYK | ffi::J_COLOR_SPACE::JCS_YCCK => true,
            other => {
                return Err(ProcessorError::Image(format!(
                    "JPEG: colour space {other:?} is not supported (only greyscale, YCbCr, RGB, CMYK and YCCK)"
                )))
            }
        };
        cinfo.out_color_space = if cmyk {
            ffi::J_COLOR_SPACE::JCS_CMYK
        } else {
            ffi::J_COLOR_SPACE::JCS_RGB
        };
        let comps = if cmyk { 4 } else { 3 };
        ffi::jpeg_start_decompress(cinfo);
        if cinfo.output_components != comps || cinfo.output_width != w || cinfo.output_height != h {
            return Err(ProcessorError::Image(format!(
                "JPEG: decoder produced {}x{}x{} for a {w}x{h} image",
                cinfo.output_width, cinfo.output_height, cinfo.output_components
            )));
        }
        let row = w as usize * 3;
        let mut rgb = crate::alloc::big_vec::<u8>(row * h as usize);
        rgb.resize(row * h as usize, 0);
        let mut cmyk_row = if cmyk {
            vec![0u8; w as usize * 4]
        } else {
            Vec::new()
        };
        while (cinfo.output_scanline as usize) < h as usize {
            let y = cinfo.output_scanline as usize;
            let mut row_ptr = if cmyk {
                cmyk_row.as_mut_ptr()
            } else {
                rgb.as_mut_ptr().add(y * row)
            };
            let n = ffi::jpeg_read_scanlines(cinfo, &mut row_ptr, 1);
            if n == 0 {
                return Err(ProcessorError::Image(
                    "JPEG: truncated file (decoder stalled)".into(),
                ));
            }
            if cmyk {
                cmyk_row_to_rgb(&cmyk_row, &mut rgb[y * row..(y + 1) * row]);
            }
        }
        ffi::jpeg_finish_decompress(cinfo);
        drop(st);
        Ok(Decoded {
            width: w,
            height: h,
            rgb,
            orientation,
        })
    }
}

/// One row of libjpeg's CMYK output to RGB, as PIL does it: its JPEG plugin reads every four-component
/// file inverted (rawmode "CMYK;I", the Adobe convention), then `convert("RGB")` computes
/// `nk - nk·c/255` per channel with nk = 255 - k (Pillow's `cmyk2rgb`, integer `MULDIV255`).
/// Here, with x the bytes libjpeg gives (PIL's values are 255 - x): nk = x[3], c = 255 - x[ch].
fn cmyk_row_to_rgb(cmyk: &[u8], rgb: &mut [u8]) {
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    for (o, x) in rgb.chunks_exact_mut(3).zip(cmyk.chunks_exact(4)) {
        let nk = x[3] as i32;
        for c in 0..3 {
            o[c] = (nk - muldiv255(255 - x[c] as i32, nk)).clamp(0, 255) as u8;
        }
    }
}

unsafe fn exif_orientation_from_markers(mut m: *mut ffi::jpeg_marker_struct) -> Option<u16> {
    while !m.is_null() {
        let mk = &*m;
        if mk.marker == ffi::jpeg_marker::APP0 as u8 + 1 && !mk.data.is_null() {
            let data = std::slice::from_raw_parts(mk.data, mk.data_length as usize);
            if let Some(tiff) = data.strip_prefix(b"Exif\0\0") {
                // PIL keeps the first Exif segment.
                return exif_orientation(tiff);
            }
        }
        m = mk.next;
    }
    None
}

/// The orientation tag (0x0112) of IFD0 of a TIFF-structured EXIF block; None if absent or malformed.
pub(crate) fn exif_orientation(tiff: &[u8]) -> Option<u16> {
    let le = match tiff.get(0..2)? {
        b"II" => true,
        b"MM" => false,
        _ => return None,
    };
    let u16_at = |o: usize| -> Option<u16> {
        let b = tiff.get(o..o + 2)?;
        Some(if le {
            u16::from_le_bytes([b[0], b[1]])
        } else {
            u16::from_be_bytes([b[0], b[1]])
        })
    };
    let u32_at = |o: usize| -> Option<u32> {
        let b = tiff.get(o..o + 4)?;
        let a = [b[0], b[1], b[2], b[3]];
        Some(if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        })
    };
    let ifd = u32_at(4)? as usize;
    let n = u16_at(ifd)? as usize;
    for i in 0..n {
        let e = ifd + 2 + 12 * i;
        if u16_at(e)? == 0x0112 {
            // Type SHORT (3), count 1: the value sits in the first two bytes of the value field.
            return match u16_at(e + 2)? {
                3 => u16_at(e + 8),
                4 => u32_at(e + 8).map(|v| v as u16),
                _ => None,
            };
        }
    }
    None
}
