//! MP4, MKV, WebM and MOV through the system FFmpeg libraries (the `ffmpeg` cargo feature), decoded the way
//! transformers 5.23 decodes a video file with torchcodec (`seek_mode="exact"`):
//!
//! 1. Open under limits: only the demuxers of [`DEMUXERS`] are allowed (no playlist or concat demuxer that
//!    would open other files), the container's streams and the video stream's header (frame size, frame
//!    count) are checked against [`VideoLimits`] before any packet is decoded, and every decoder that
//!    FFmpeg opens (also inside `avformat_find_stream_info`) gets `max_pixels` from the limits.
//! 2. Scan: the video stream's packets are read without decoding (pts, key flag, duration): the frame count
//!    is the packet count, frame i is the i-th packet by pts, and the fps is frames / (last end − first pts),
//!    torchcodec's `num_frames` and `average_fps` from content. At most `max_source_frames` packets.
//! 3. Decode the sampled frames only: seek to the keyframe at or before each sampled frame unless decoding
//!    forward from the current position reaches it without passing a keyframe, decode forward, and convert
//!    each wanted frame to RGB24 at its own size with swscale (`SWS_BILINEAR`, the coefficients of the
//!    frame's colour space: torchcodec's CPU conversion). The caller's sink gets each frame as it is
//!    decoded (the processor resizes it at once), so memory is one decoded frame plus the resized ones,
//!    never the file's length.

use crate::frames::{VideoLimits, VideoProbe};
use crate::ProcessorError;
use ff::ffi;
use ffmpeg_next as ff;
use image::RgbImage;
use std::io::{Cursor, Read, Seek};
use std::path::Path;
use std::ptr;
use std::sync::Once;

/// The demuxers a video may be read with (FFmpeg's `format_whitelist`): MP4/MOV, Matroska/WebM, AVI,
/// MPEG-TS/PS, FLV.
pub const DEMUXERS: &str = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,mpeg,flv";

/// Streams a container may hold (a movie has a handful).
const MAX_STREAMS: u32 = 64;

/// Consecutive unreadable packets skipped before the file is called corrupt.
const MAX_BAD_PACKETS: usize = 64;

fn err(msg: impl std::fmt::Display) -> ProcessorError {
    ProcessorError::Video(msg.to_string())
}

fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Registration is automatic since FFmpeg 4; init only sets up the library's globals.
        let _ = ff::init();
        // Errors come back as values and are reported by us, naming the file.
        ff::util::log::set_level(ff::util::log::Level::Fatal);
    });
}

/// One frame of the video stream, from the packet scan.
#[derive(Clone, Copy, Debug)]
struct FrameEntry {
    pts: i64,
    key: bool,
}

/// An opened video file: the demuxer, the video stream's decoder and its frame index.
pub struct FfmpegVideo {
    input: ff::format::context::Input,
    stream: usize,
    decoder: ff::decoder::Video,
    /// Frames in presentation order.
    frames: Vec<FrameEntry>,
    /// Presentation timestamps of the keyframes, ascending.
    keys: Vec<i64>,
    /// What the probe found: format label, size, frame count, duration.
    pub probe: VideoProbe,
    /// Frames per second from the content (torchcodec's `average_fps`).
    pub fps: f64,
}

/// A source to read: a file (read through a handle, never as a URL) or bytes in memory.
pub enum Source<'a> {
    File(&'a Path),
    Bytes(Vec<u8>),
}

impl FfmpegVideo {
    /// Open and probe a video, then scan its packets (nothing is decoded except what
    /// `avformat_find_stream_info` needs, under `max_pixels`).
    pub fn open(src: Source, limits: &VideoLimits) -> Result<FfmpegVideo, ProcessorError> {
        init();
        let io = match src {
            Source::File(p) => {
                let f = std::fs::File::open(p).map_err(|source| ProcessorError::Io {
                    path: p.into(),
                    source,
                })?;
                stream_io(f)?
            }
            Source::Bytes(b) => {
                if b.is_empty() {
                    return Err(err("empty file"));
                }
                stream_io(Cursor::new(b))?
            }
        };
        let mut input = open_input(io, limits)?;
        let (stream, label) = {
            let s = input
                .streams()
                .best(ff::media::Type::Video)
                .ok_or_else(|| err("the file has no video stream"))?;
            (
                s.index(),
                input
                    .format()
                    .name()
                    .split(',')
                    .next()
                    .unwrap_or("video")
                    .to_uppercase(),
            )
        };
        let st = input.stream(stream).expect("best stream exists");
        let (w, h) = unsafe {
            // Safety: the stream's codec parameters live as long as the input.
            let par = (*st.as_ptr()).codecpar;
            ((*par).width, (*par).height)
        };
        check_size(&label, w, h, limits)?;
        let header_frames = st.frames();
        if header_frames > limits.max_source_frames as i64 {
            return Err(err(format!(
                "{label}: the header claims {header_frames} frames, over the limit of {} (VideoLimits max_source_frames)",
                limits.max_source_frames
            )));
        }
        let time_base = st.time_base();
        let avg_rate = st.avg_frame_rate();
        let tb = time_base.numerator() as f64 / time_base.denominator().max(1) as f64;
        // The duration the header promises: the stream's own, or the container's when it holds nothing else.
        let header_seconds = if st.duration() > 0 {
            Some(st.duration() as f64 * tb)
        } else if input.nb_streams() == 1 && input.duration() > 0 {
            Some(input.duration() as f64 / ffi::AV_TIME_BASE as f64)
        } else {
            None
        };
        let mut ctx = ff::codec::context::Context::from_parameters(st.parameters())
            .map_err(|e| err(format!("{label}: unsupported video stream: {e}")))?;
        unsafe {
            // Safety: the context was just allocated and is not opened yet.
            (*ctx.as_mut_ptr()).max_pixels = max_pixels(limits);
        }
        let decoder = ctx
            .decoder()
            .video()
            .map_err(|e| err(format!("{label}: no decoder for the video stream: {e}")))?;
        let (frames, keys, span) = scan(&mut input, stream, &label, limits)?;
        if frames.is_empty() {
            return Err(err(format!("{label}: the video stream holds no frames")));
        }
        let seconds = span.map(|(a, b)| (b - a) as f64 * tb).filter(|s| *s > 0.0);
        if let (Some(h), Some(s)) = (header_seconds, seconds) {
            // Frames missing from the end: the file was cut (a stream format reads up to the cut).
            let frame = s / frames.len() as f64;
            if h - s > (2.0 * frame).max(0.05 * h) {
                return Err(err(format!(
                    "{label}: truncated file: the header says {h:.2} s but the frames end after {s:.2} s \
                     ({} frames)",
                    frames.len()
                )));
            }
        }
        let header_fps = (avg_rate.numerator() > 0 && avg_rate.denominator() > 0)
            .then(|| avg_rate.numerator() as f64 / avg_rate.denominator() as f64);
        let fps = match (seconds, header_fps) {
            (Some(s), _) => frames.len() as f64 / s,
            (None, Some(f)) => f,
            (None, None) => crate::DEFAULT_SOURCE_FPS,
        };
        let probe = VideoProbe {
            format: leak_label(&label),
            width: w as u32,
            height: h as u32,
            frames: frames.len(),
            duration: seconds,
        };
        Ok(FfmpegVideo {
            input,
            stream,
            decoder,
            frames,
            keys,
            probe,
            fps,
        })
    }

    /// Decode the frames at `wanted` (ascending indices into the presentation order) and hand each to
    /// `sink` as RGB24 at the stream's size, in order.
    pub fn decode(
        &mut self,
        wanted: &[usize],
        limits: &VideoLimits,
        sink: &mut dyn FnMut(usize, RgbImage) -> Result<(), ProcessorError>,
    ) -> Result<(), ProcessorError> {
        let label = self.probe.format;
        let mut scaler: Option<(ScalerKey, ff::software::scaling::Context)> = None;
        let mut decoded = ff::frame::Video::empty();
        let mut rgb = ff::frame::Video::empty();
        // Index of the last frame out of the decoder since the last seek (None: must seek).
        let mut position: Option<usize> = None;
        let mut eof = false;
        let mut at = 0;
        while at < wanted.len() {
            let target = wanted[at];
            if target >= self.frames.len() {
                return Err(err(format!(
                    "{label}: frame {target} asked of {}",
                    self.frames.len()
                )));
            }
            let pts = self.frames[target].pts;
            let key = self.key_at_or_before(pts);
            let must_seek = match position {
                None => true,
                Some(p) => p >= target || key.is_some_and(|k| k > self.frames[p].pts),
            };
            if must_seek {
                self.seek(key.unwrap_or(self.frames[0].pts))?;
                eof = false;
            }
            // Decode forward until a frame at or past the target comes out.
            loop {
                match self.decoder.receive_frame(&mut decoded) {
                    Ok(()) => {
                        let Some(fp) = decoded.timestamp().or(decoded.pts()) else {
                            continue;
                        };
                        let i = self.frames.partition_point(|f| f.pts < fp);
                        position = Some(i.min(self.frames.len() - 1));
                        if fp >= pts {
                            break;
                        }
                    }
                    Err(ff::Error::Eof) => {
                        return Err(err(format!(
                            "{label}: frame {target} could not be decoded (the file is truncated or corrupt)"
                        )))
                    }
                    Err(ff::Error::Other { errno }) if errno == ff::util::error::EAGAIN => {
                        if eof {
                            return Err(err(format!(
                                "{label}: frame {target} could not be decoded (the decoder stalled)"
                            )));
                        }
                        eof = !self.feed()?;
                    }
                    Err(e) => {
                        return Err(err(format!(
                            "{label}: decoding frame {target} failed: {e}"
                        )))
                    }
                }
            }
            let (w, h) = (decoded.width(), decoded.height());
            if (w, h) != (self.probe.width, self.probe.height) {
                return Err(err(format!(
                    "{label}: frame {target} is {w}x{h} but the stream's header says {}x{} (a size change mid-stream is not supported)",
                    self.probe.width, self.probe.height
                )));
            }
            check_size(label, w as i32, h as i32, limits)?;
            let key = ScalerKey {
                format: decoded.format(),
                width: w,
                height: h,
                space: decoded.color_space(),
                full_range: decoded.color_range() == ff::util::color::Range::JPEG,
            };
            if scaler.as_ref().map(|s| s.0) != Some(key) {
                scaler = Some((key, make_scaler(&key, label)?));
            }
            let s = &mut scaler.as_mut().expect("set above").1;
            s.run(&decoded, &mut rgb)
                .map_err(|e| err(format!("{label}: converting frame {target} to RGB: {e}")))?;
            let img = tight_rgb(&rgb, label)?;
            // Repeated indices (never produced by the sampler, but allowed) get the same frame.
            while at < wanted.len() && wanted[at] == target {
                sink(target, img.clone())?;
                at += 1;
            }
        }
        Ok(())
    }

    fn key_at_or_before(&self, pts: i64) -> Option<i64> {
        let i = self.keys.partition_point(|&k| k <= pts);
        (i > 0).then(|| self.keys[i - 1])
    }

    /// Seek the demuxer to the keyframe at or before `pts` and drop what the decoder holds.
    fn seek(&mut self, pts: i64) -> Result<(), ProcessorError> {
        // Safety: the format context is open; av_seek_frame takes the stream's own time base.
        let r = unsafe {
            ffi::av_seek_frame(
                self.input.as_mut_ptr(),
                self.stream as i32,
                pts,
                ffi::AVSEEK_FLAG_BACKWARD,
            )
        };
        if r < 0 {
            return Err(err(format!(
                "{}: seeking to timestamp {pts} failed: {}",
                self.probe.format,
                ff::Error::from(r)
            )));
        }
        self.decoder.flush();
        Ok(())
    }

    /// Send the next packet of the video stream to the decoder (end of stream at the end); false at the end.
    fn feed(&mut self) -> Result<bool, ProcessorError> {
        let mut bad = 0;
        loop {
            let mut p = ff::Packet::empty();
            match p.read(&mut self.input) {
                Ok(()) => {
                    if p.stream() != self.stream {
                        continue;
                    }
                    match self.decoder.send_packet(&p) {
                        // A corrupt packet: the decoder resynchronizes on the next one.
                        Ok(()) | Err(ff::Error::InvalidData) => return Ok(true),
                        Err(e) => {
                            return Err(err(format!(
                                "{}: the decoder refused a packet: {e}",
                                self.probe.format
                            )))
                        }
                    }
                }
                Err(ff::Error::Eof) => {
                    let _ = self.decoder.send_eof();
                    return Ok(false);
                }
                Err(ff::Error::InvalidData) if bad < MAX_BAD_PACKETS => bad += 1,
                Err(e) => {
                    return Err(err(format!(
                        "{}: reading the file failed (truncated or corrupt): {e}",
                        self.probe.format
                    )))
                }
            }
        }
    }
}

/// The parameters a swscale context is made for.
#[derive(Clone, Copy, PartialEq, Eq)]
struct ScalerKey {
    format: ff::format::Pixel,
    width: u32,
    height: u32,
    space: ff::util::color::Space,
    full_range: bool,
}

/// RGB24 at the frame's own size, `SWS_BILINEAR`, the YUV coefficients of the frame's colour space for
/// both tables and swscale's default ranges (torchcodec's `createSwsContext`).
fn make_scaler(
    k: &ScalerKey,
    label: &str,
) -> Result<ff::software::scaling::Context, ProcessorError> {
    use ff::software::scaling::{Context, Flags};
    let mut c = Context::get(
        k.format,
        k.width,
        k.height,
        ff::format::Pixel::RGB24,
        k.width,
        k.height,
        Flags::BILINEAR,
    )
    .map_err(|e| {
        err(format!(
            "{label}: no conversion from pixel format {:?} to RGB: {e}",
            k.format
        ))
    })?;
    // Safety: the context is valid; the out-pointers are locals; the coefficient table is static in swscale.
    unsafe {
        let ctx = c.as_mut_ptr();
        let (mut inv, mut table) = (ptr::null_mut(), ptr::null_mut());
        let (mut src_range, mut dst_range, mut bri, mut con, mut sat) = (0, 0, 0, 0, 0);
        if ffi::sws_getColorspaceDetails(
            ctx,
            &mut inv,
            &mut src_range,
            &mut table,
            &mut dst_range,
            &mut bri,
            &mut con,
            &mut sat,
        ) >= 0
        {
            let space: ffi::AVColorSpace = k.space.into();
            let coeffs = ffi::sws_getCoefficients(space as i32);
            ffi::sws_setColorspaceDetails(ctx, coeffs, src_range, coeffs, dst_range, bri, con, sat);
        }
    }
    Ok(c)
}

/// Copy an RGB24 frame (rows may be padded) into a tight (h, w, 3) image.
fn tight_rgb(f: &ff::frame::Video, label: &str) -> Result<RgbImage, ProcessorError> {
    let (w, h) = (f.width() as usize, f.height() as usize);
    let stride = f.stride(0);
    let data = f.data(0);
    let mut out = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        let row = data
            .get(y * stride..y * stride + w * 3)
            .ok_or_else(|| err(format!("{label}: RGB frame buffer is short")))?;
        out.extend_from_slice(row);
    }
    RgbImage::from_raw(w as u32, h as u32, out)
        .ok_or_else(|| err(format!("{label}: RGB frame buffer mismatch")))
}

/// The largest frame the decoders may allocate, in pixels: the limits' sides and allocation budget.
fn max_pixels(limits: &VideoLimits) -> i64 {
    let l = &limits.image;
    (l.max_width as i64 * l.max_height as i64).min(l.max_alloc_bytes as i64 / 4)
}

fn check_size(label: &str, w: i32, h: i32, limits: &VideoLimits) -> Result<(), ProcessorError> {
    if w <= 0 || h <= 0 {
        return Err(err(format!(
            "{label}: the video stream has no frame size ({w}x{h}) in its header"
        )));
    }
    limits
        .image
        .check(label, w as u32, h as u32)
        .map_err(|e| match e {
            ProcessorError::Image(m) => err(m),
            other => other,
        })
}

/// VideoProbe's format is a `&'static str`; the container labels are few, so keep one copy of each.
fn leak_label(label: &str) -> &'static str {
    use std::sync::Mutex;
    static LABELS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut l = LABELS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = l.iter().find(|s| **s == label) {
        return s;
    }
    let s: &'static str = Box::leak(label.to_string().into_boxed_str());
    l.push(s);
    s
}

fn stream_io<T: Read + Seek + Send + 'static>(
    s: T,
) -> Result<ff::format::context::StreamIo, ProcessorError> {
    ff::format::context::StreamIo::from_read_seek(s)
        .map_err(|e| err(format!("cannot set up reading: {e}")))
}

/// `avformat_open_input` on custom I/O with the demuxer whitelist, the stream count checked, then
/// `avformat_find_stream_info` with `max_pixels` for every stream's probing decoder.
fn open_input(
    mut io: ff::format::context::StreamIo,
    limits: &VideoLimits,
) -> Result<ff::format::context::Input, ProcessorError> {
    let mut opts = ff::Dictionary::new();
    opts.set("format_whitelist", DEMUXERS);
    // Safety: the format context is allocated here and either closed on every error path or handed to
    // `Input`, which owns it (and the custom I/O) from then on. The options arrays live until the calls
    // return and are freed after.
    unsafe {
        let mut ps = ffi::avformat_alloc_context();
        if ps.is_null() {
            return Err(err("out of memory opening the video"));
        }
        (*ps).pb = io.as_mut_ptr();
        (*ps).flags |= ffi::AVFMT_FLAG_CUSTOM_IO;
        let mut d = opts.disown();
        let r = ffi::avformat_open_input(&mut ps, ptr::null(), ptr::null_mut(), &mut d);
        ff::Dictionary::own(d);
        if r < 0 {
            // avformat_open_input frees the context on failure.
            return Err(err(format!(
                "not a supported video (FFmpeg reads MP4, MKV, WebM, MOV, AVI, MPEG-TS, FLV here): {}",
                ff::Error::from(r)
            )));
        }
        let n = (*ps).nb_streams;
        if n > MAX_STREAMS {
            ffi::avformat_close_input(&mut ps);
            return Err(err(format!(
                "the container has {n} streams, over the limit of {MAX_STREAMS}"
            )));
        }
        // Refuse a huge frame size in the header before find_stream_info decodes anything.
        for i in 0..n as usize {
            let st = *(*ps).streams.add(i);
            let par = (*st).codecpar;
            if (*par).codec_type == ffi::AVMediaType::AVMEDIA_TYPE_VIDEO
                && (*par).width > 0
                && (*par).height > 0
            {
                if let Err(e) = check_size("video", (*par).width, (*par).height, limits) {
                    ffi::avformat_close_input(&mut ps);
                    return Err(e);
                }
            }
        }
        let mp = max_pixels(limits).to_string();
        let mut per_stream: Vec<*mut ffi::AVDictionary> = (0..n)
            .map(|_| {
                let mut d = ff::Dictionary::new();
                d.set("max_pixels", &mp);
                d.disown()
            })
            .collect();
        let r = ffi::avformat_find_stream_info(
            ps,
            if n == 0 {
                ptr::null_mut()
            } else {
                per_stream.as_mut_ptr()
            },
        );
        for d in per_stream.iter_mut() {
            ffi::av_dict_free(d);
        }
        if r < 0 {
            ffi::avformat_close_input(&mut ps);
            return Err(err(format!(
                "the video's streams cannot be read (truncated or corrupt file): {}",
                ff::Error::from(r)
            )));
        }
        Ok(ff::format::context::Input::wrap_with_custom_io(ps, io))
    }
}

/// Read every packet of the video stream without decoding: the frames by pts, the keyframes, and the
/// content's span (first pts, last pts + duration).
#[allow(clippy::type_complexity)]
fn scan(
    input: &mut ff::format::context::Input,
    stream: usize,
    label: &str,
    limits: &VideoLimits,
) -> Result<(Vec<FrameEntry>, Vec<i64>, Option<(i64, i64)>), ProcessorError> {
    let mut frames = Vec::new();
    let mut span: Option<(i64, i64)> = None;
    let mut bad = 0;
    loop {
        let mut p = ff::Packet::empty();
        match p.read(input) {
            Ok(()) => {
                bad = 0;
                if p.stream() != stream {
                    continue;
                }
                let Some(pts) = p.pts().or(p.dts()) else {
                    return Err(err(format!(
                        "{label}: packet {} of the video stream has no timestamp",
                        frames.len()
                    )));
                };
                if frames.len() >= limits.max_source_frames {
                    return Err(err(format!(
                        "{label}: more than {} frames (VideoLimits max_source_frames)",
                        limits.max_source_frames
                    )));
                }
                let end = pts.saturating_add(p.duration().max(0));
                span = Some(match span {
                    None => (pts, end),
                    Some((a, b)) => (a.min(pts), b.max(end)),
                });
                frames.push(FrameEntry {
                    pts,
                    key: p.is_key(),
                });
            }
            Err(ff::Error::Eof) => break,
            Err(ff::Error::InvalidData) if bad < MAX_BAD_PACKETS => bad += 1,
            Err(e) => {
                return Err(err(format!(
                    "{label}: reading packet {} failed (truncated or corrupt file): {e}",
                    frames.len()
                )))
            }
        }
    }
    frames.sort_by_key(|f| f.pts);
    let keys = frames.iter().filter(|f| f.key).map(|f| f.pts).collect();
    Ok((frames, keys, span))
}
