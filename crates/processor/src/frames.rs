//! Video frames without system libraries: animated GIF, animated WebP, APNG, and a directory of still frames.
//!
//! Every source is probed before a pixel is decoded (RELIABILITY 5): the container's block structure is walked
//! to count the frames, read their delays and check each frame's extent against the canvas and the limits.
//! Only then are the frames decoded, one at a time, in order; the caller's sink sees the sampled ones and
//! nothing else is kept, so memory is one canvas plus what the sink keeps, never the file's length.

use crate::decode::ImageLimits;
use crate::ProcessorError;
use image::{AnimationDecoder, RgbImage};
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// Budgets for one video source (on top of the per-frame [`ImageLimits`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VideoLimits {
    /// Most frames a file or directory may hold (all of them, sampled or not).
    pub max_source_frames: usize,
    /// Per-frame width/height/allocation budgets and the largest accepted file.
    pub image: ImageLimits,
}

impl Default for VideoLimits {
    /// An hour at 30 fps; frames as large as the image limits.
    fn default() -> Self {
        VideoLimits {
            max_source_frames: 108_000,
            image: ImageLimits::default(),
        }
    }
}

/// What a source says about itself before decoding.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoProbe {
    /// "GIF", "WEBP", "APNG", "frames"
    pub format: &'static str,
    pub width: u32,
    pub height: u32,
    /// Frames in the source.
    pub frames: usize,
    /// Sum of the frame delays in seconds (None: the source has no timing, e.g. a frame directory).
    pub duration: Option<f64>,
}

impl VideoProbe {
    /// Frames per second from the container's timing (frames / duration), if it has any.
    pub fn fps(&self) -> Option<f64> {
        self.duration
            .filter(|&d| d > 0.0)
            .map(|d| self.frames as f64 / d)
    }
}

fn err(format: &str, msg: impl std::fmt::Display) -> ProcessorError {
    ProcessorError::Video(format!("{format}: {msg}"))
}

/// A cursor over container bytes whose reads fail with "truncated" instead of panicking.
struct Bytes<'a> {
    b: &'a [u8],
    at: usize,
    format: &'static str,
}

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProcessorError> {
        if self.b.len().saturating_sub(self.at) < n {
            return Err(err(
                self.format,
                format!("truncated file (needs {n} bytes at offset {})", self.at),
            ));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, ProcessorError> {
        Ok(self.take(1)?[0])
    }
    fn u16le(&mut self) -> Result<u16, ProcessorError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn done(&self) -> bool {
        self.at >= self.b.len()
    }
}

fn check_frame(
    format: &'static str,
    limits: &VideoLimits,
    index: usize,
    (x, y, w, h): (u64, u64, u64, u64),
    (cw, ch): (u32, u32),
) -> Result<(), ProcessorError> {
    if index >= limits.max_source_frames {
        return Err(err(
            format,
            format!(
                "more than {} frames (VideoLimits max_source_frames)",
                limits.max_source_frames
            ),
        ));
    }
    if w == 0 || h == 0 || x + w > cw as u64 || y + h > ch as u64 {
        return Err(err(
            format,
            format!("frame {index} ({w}x{h} at {x},{y}) does not lie inside the {cw}x{ch} canvas"),
        ));
    }
    Ok(())
}

/// GIF: header, logical screen, then extension / image blocks until the trailer. FFmpeg's timing: a delay
/// under 2 centiseconds counts as 10.
fn probe_gif(b: &[u8], limits: &VideoLimits) -> Result<VideoProbe, ProcessorError> {
    const F: &str = "GIF";
    let mut r = Bytes {
        b,
        at: 6,
        format: F,
    };
    let (cw, ch) = (r.u16le()? as u32, r.u16le()? as u32);
    limits.image.check(F, cw, ch)?;
    let packed = r.u8()?;
    r.take(2)?;
    if packed & 0x80 != 0 {
        r.take(3 << ((packed & 7) + 1))?;
    }
    let skip_sub_blocks = |r: &mut Bytes| -> Result<(), ProcessorError> {
        loop {
            let n = r.u8()? as usize;
            if n == 0 {
                return Ok(());
            }
            r.take(n)?;
        }
    };
    let (mut frames, mut centis, mut delay) = (0usize, 0u64, 0u64);
    loop {
        if r.done() {
            // Many encoders omit the trailer; a file ending between blocks is complete.
            break;
        }
        match r.u8()? {
            0x21 => {
                let label = r.u8()?;
                if label == 0xF9 {
                    let n = r.u8()? as usize;
                    let gce = r.take(n)?;
                    if n >= 3 {
                        delay = u16::from_le_bytes([gce[1], gce[2]]) as u64;
                    }
                }
                skip_sub_blocks(&mut r)?;
            }
            0x2C => {
                let (x, y) = (r.u16le()? as u64, r.u16le()? as u64);
                let (w, h) = (r.u16le()? as u64, r.u16le()? as u64);
                check_frame(F, limits, frames, (x, y, w, h), (cw, ch))?;
                let p = r.u8()?;
                if p & 0x80 != 0 {
                    r.take(3 << ((p & 7) + 1))?;
                }
                r.u8()?; // LZW minimum code size
                skip_sub_blocks(&mut r)?;
                frames += 1;
                centis += if delay < 2 { 10 } else { delay };
                delay = 0;
            }
            0x3B => break,
            other => {
                return Err(err(
                    F,
                    format!(
                        "corrupt file (block type 0x{other:02x} at offset {})",
                        r.at - 1
                    ),
                ))
            }
        }
    }
    Ok(VideoProbe {
        format: F,
        width: cw,
        height: ch,
        frames,
        duration: Some(centis as f64 / 100.0),
    })
}

fn u24(s: &[u8]) -> u64 {
    s[0] as u64 | (s[1] as u64) << 8 | (s[2] as u64) << 16
}

/// WebP: RIFF chunks; an animation is VP8X (canvas) + ANMF frames (extent, duration in ms). A still WebP is
/// one frame.
fn probe_webp(b: &[u8], limits: &VideoLimits) -> Result<VideoProbe, ProcessorError> {
    const F: &str = "WEBP";
    let riff = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
    let end = (riff + 8).min(b.len());
    let mut r = Bytes {
        b: &b[..end],
        at: 12,
        format: F,
    };
    let (mut canvas, mut frames, mut ms, mut still) = (None, 0usize, 0u64, false);
    while !r.done() {
        let fourcc: [u8; 4] = r.take(4)?.try_into().expect("4 bytes");
        let len = u32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes")) as usize;
        let body = r.take(len)?;
        if len % 2 == 1 && !r.done() {
            r.take(1)?;
        }
        match &fourcc {
            b"VP8X" if len >= 10 => {
                let (w, h) = (u24(&body[4..7]) + 1, u24(&body[7..10]) + 1);
                if w > u32::MAX as u64 || h > u32::MAX as u64 {
                    return Err(err(F, format!("canvas {w}x{h} is too large")));
                }
                limits.image.check(F, w as u32, h as u32)?;
                canvas = Some((w as u32, h as u32));
            }
            b"ANMF" if len >= 16 => {
                let c = canvas.ok_or_else(|| err(F, "animation frame before the VP8X header"))?;
                let (x, y) = (u24(&body[0..3]) * 2, u24(&body[3..6]) * 2);
                let (w, h) = (u24(&body[6..9]) + 1, u24(&body[9..12]) + 1);
                check_frame(F, limits, frames, (x, y, w, h), c)?;
                frames += 1;
                ms += u24(&body[12..15]);
            }
            b"VP8 " | b"VP8L" => still = true,
            _ => {}
        }
    }
    if frames == 0 {
        if !still {
            return Err(err(F, "no image data"));
        }
        // A still picture: one frame; its size comes from the image decoder's header.
        let img = image::ImageReader::with_format(Cursor::new(b), image::ImageFormat::WebP)
            .into_dimensions()
            .map_err(|e| err(F, format!("corrupt or truncated file: {e}")))?;
        limits.image.check(F, img.0, img.1)?;
        return Ok(VideoProbe {
            format: F,
            width: img.0,
            height: img.1,
            frames: 1,
            duration: None,
        });
    }
    let (width, height) = canvas.expect("frames need a canvas");
    Ok(VideoProbe {
        format: F,
        width,
        height,
        frames,
        duration: Some(ms as f64 / 1000.0),
    })
}

/// PNG / APNG: IHDR (canvas), acTL (frame count), fcTL per frame (extent, delay num/den).
fn probe_png(b: &[u8], limits: &VideoLimits) -> Result<VideoProbe, ProcessorError> {
    let mut r = Bytes {
        b,
        at: 8,
        format: "APNG",
    };
    let be32 = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as u64;
    let (mut canvas, mut declared, mut frames, mut seconds) = (None, None, 0usize, 0f64);
    loop {
        let len = be32(r.take(4)?) as usize;
        let kind: [u8; 4] = r.take(4)?.try_into().expect("4 bytes");
        let body = r.take(len)?;
        r.take(4)?; // CRC (the decoder checks it)
        match &kind {
            b"IHDR" if len >= 8 => {
                let (w, h) = (be32(&body[0..4]), be32(&body[4..8]));
                let (w, h) = (w.min(u32::MAX as u64) as u32, h.min(u32::MAX as u64) as u32);
                limits.image.check("APNG", w, h)?;
                canvas = Some((w, h));
            }
            b"acTL" if len >= 8 => {
                let n = be32(&body[0..4]) as usize;
                if n == 0 || n > limits.max_source_frames {
                    return Err(err(
                        "APNG",
                        format!(
                            "acTL claims {n} frames (1 to {} allowed, VideoLimits max_source_frames)",
                            limits.max_source_frames
                        ),
                    ));
                }
                declared = Some(n);
            }
            b"fcTL" if len >= 26 => {
                let c = canvas.ok_or_else(|| err("APNG", "fcTL before IHDR"))?;
                let (w, h, x, y) = (
                    be32(&body[4..8]),
                    be32(&body[8..12]),
                    be32(&body[12..16]),
                    be32(&body[16..20]),
                );
                check_frame("APNG", limits, frames, (x, y, w, h), c)?;
                let num = u16::from_be_bytes([body[20], body[21]]) as f64;
                let den = match u16::from_be_bytes([body[22], body[23]]) {
                    0 => 100.0,
                    d => d as f64,
                };
                seconds += num / den;
                frames += 1;
            }
            b"IEND" => break,
            _ => {}
        }
    }
    let (width, height) = canvas.ok_or_else(|| err("PNG", "no IHDR chunk"))?;
    match declared {
        None => Ok(VideoProbe {
            format: "PNG",
            width,
            height,
            frames: 1,
            duration: None,
        }),
        Some(n) if n != frames => Err(err(
            "APNG",
            format!("acTL declares {n} frames but the file holds {frames}"),
        )),
        Some(_) => Ok(VideoProbe {
            format: "APNG",
            width,
            height,
            frames,
            duration: Some(seconds),
        }),
    }
}

/// Probe an animated image file's bytes: format, canvas, frame count and duration, every frame's extent
/// checked; nothing decoded.
pub fn probe_bytes(b: &[u8], limits: &VideoLimits) -> Result<VideoProbe, ProcessorError> {
    if b.len() as u64 > limits.image.max_file_bytes {
        return Err(ProcessorError::Video(format!(
            "file is {} bytes, over the limit of {} (ImageLimits max_file_bytes)",
            b.len(),
            limits.image.max_file_bytes
        )));
    }
    if !is_animated_image(b) && !b.is_empty() {
        let head: Vec<String> = b.iter().take(8).map(|x| format!("{x:02x}")).collect();
        return Err(ProcessorError::Video(format!(
            "not a supported video (first bytes {}); supported: animated GIF, WebP, APNG, a directory of \
             frames{}",
            head.join(" "),
            if cfg!(feature = "ffmpeg") {
                ""
            } else {
                "; MP4, MKV, WebM and MOV need the `ffmpeg` cargo feature, not built in"
            }
        )));
    }
    if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
        probe_gif(b, limits)
    } else if b.len() >= 12 && &b[0..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        probe_webp(b, limits)
    } else if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        probe_png(b, limits)
    } else {
        Err(ProcessorError::Video("empty file".into()))
    }
}

/// Whether `head` (a file's first bytes, at least 12 of them when there are) starts like a GIF, WebP or
/// PNG / APNG: the formats decoded here without system libraries.
pub fn is_animated_image(head: &[u8]) -> bool {
    head.starts_with(b"GIF87a")
        || head.starts_with(b"GIF89a")
        || (head.len() >= 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"WEBP")
        || head.starts_with(b"\x89PNG\r\n\x1a\n")
}

/// Decode the frames of an animated image in order, calling `sink(index, frame)` for each index in `wanted`
/// (ascending); the others are composited and dropped. Alpha is dropped like FFmpeg's RGB24 conversion.
pub fn decode_bytes(
    b: &[u8],
    probe: &VideoProbe,
    limits: &VideoLimits,
    wanted: &[usize],
    sink: &mut dyn FnMut(usize, RgbImage) -> Result<(), ProcessorError>,
) -> Result<(), ProcessorError> {
    let f = probe.format;
    let dec_err = |e: image::ImageError| err(f, format!("corrupt or truncated file: {e}"));
    if probe.frames == 1 && f != "GIF" && f != "APNG" {
        // A still WebP/PNG: one frame through the image decoder.
        let img = crate::decode::decode_rgb(b, &limits.image)?;
        if wanted.first() == Some(&0) {
            sink(0, img)?;
        }
        return Ok(());
    }
    let mut lim = image::Limits::default();
    lim.max_alloc = Some(limits.image.max_alloc_bytes);
    let frames = match f {
        "GIF" => {
            let mut d = image::codecs::gif::GifDecoder::new(Cursor::new(b)).map_err(dec_err)?;
            image::ImageDecoder::set_limits(&mut d, lim).map_err(dec_err)?;
            d.into_frames()
        }
        "WEBP" => {
            let mut d = image::codecs::webp::WebPDecoder::new(Cursor::new(b)).map_err(dec_err)?;
            image::ImageDecoder::set_limits(&mut d, lim).map_err(dec_err)?;
            d.into_frames()
        }
        _ => {
            let mut d = image::codecs::png::PngDecoder::new(Cursor::new(b)).map_err(dec_err)?;
            image::ImageDecoder::set_limits(&mut d, lim).map_err(dec_err)?;
            d.apng().map_err(dec_err)?.into_frames()
        }
    };
    let mut want = wanted.iter().peekable();
    for (i, frame) in frames.enumerate() {
        let Some(&&next) = want.peek() else { break };
        let frame = frame.map_err(dec_err)?;
        if i != next {
            continue;
        }
        let rgba = frame.into_buffer();
        let (w, h) = rgba.dimensions();
        let rgb: Vec<u8> = rgba
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        let img = RgbImage::from_raw(w, h, rgb).ok_or_else(|| err(f, "frame buffer mismatch"))?;
        while want.peek() == Some(&&i) {
            want.next();
            sink(i, img.clone())?;
        }
    }
    if let Some(i) = want.next() {
        return Err(err(
            f,
            format!(
                "frame {i} could not be decoded (the file ends after fewer frames than its {} blocks)",
                probe.frames
            ),
        ));
    }
    Ok(())
}

/// File names a frame directory may hold.
const FRAME_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "webp", "gif"];

/// The frames of a directory: image files sorted by name (byte order), each header read (no pixels) and
/// checked to have the first frame's size.
pub fn probe_dir(
    dir: &Path,
    limits: &VideoLimits,
) -> Result<(VideoProbe, Vec<PathBuf>), ProcessorError> {
    let io = |source| ProcessorError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io)? {
        let p = e.map_err(io)?.path();
        let ext = p
            .extension()
            .and_then(|x| x.to_str())
            .map(str::to_ascii_lowercase);
        if p.is_file() && ext.is_some_and(|x| FRAME_EXTENSIONS.contains(&x.as_str())) {
            if files.len() >= limits.max_source_frames {
                return Err(ProcessorError::Video(format!(
                    "{}: more than {} frames (VideoLimits max_source_frames)",
                    dir.display(),
                    limits.max_source_frames
                )));
            }
            files.push(p);
        }
    }
    files.sort();
    let Some(first) = files.first() else {
        return Err(ProcessorError::Video(format!(
            "{}: no frames (image files named *.{{{}}})",
            dir.display(),
            FRAME_EXTENSIONS.join(",")
        )));
    };
    let dims = |p: &Path| -> Result<(u32, u32), ProcessorError> {
        let (w, h) = image::ImageReader::open(p)
            .and_then(|r| r.with_guessed_format())
            .map_err(|source| ProcessorError::Io {
                path: p.to_path_buf(),
                source,
            })?
            .into_dimensions()
            .map_err(|e| {
                ProcessorError::Video(format!("{}: not a readable image: {e}", p.display()))
            })?;
        limits
            .image
            .check("frame", w, h)
            .map_err(|e| ProcessorError::Video(format!("{}: {e}", p.display())))?;
        Ok((w, h))
    };
    let (w, h) = dims(first)?;
    for p in &files[1..] {
        let d = dims(p)?;
        if d != (w, h) {
            return Err(ProcessorError::Video(format!(
                "{}: frame is {}x{} but {} is {w}x{h}; every frame of a directory must have one size",
                p.display(),
                d.0,
                d.1,
                first.display()
            )));
        }
    }
    Ok((
        VideoProbe {
            format: "frames",
            width: w,
            height: h,
            frames: files.len(),
            duration: None,
        },
        files,
    ))
}
