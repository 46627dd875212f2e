"""Reference data for the `ffmpeg` feature (crates/processor/tests/video_ffmpeg.rs): the clips of
testdata/video/clips/ffmpeg (made by make_ffmpeg_clips.sh) decoded with PyAV the way transformers 5.23's
torchcodec backend decodes a file, then handed to transformers' Qwen3VLVideoProcessor with their metadata.

torchcodec (seek_mode="exact") counts the frames from the packets, orders them by pts, and takes
average_fps = frames / (last pts + duration - first pts); it converts each frame to RGB24 with swscale
(SWS_BILINEAR, the frame's colour-space coefficients). PyAV's `to_ndarray(format="rgb24")` is the same
swscale call; PyAV's wheel carries its own FFmpeg, so the pixels may differ from the system FFmpeg's by a
level or two (the Rust test's tolerance); the frame count, fps, sampled indices, grid and timestamps may not.

Writes testdata/video/ffmpeg_cases.json: per clip the metadata, indices, grid, timestamps, the first row
of pixel_values_videos (as levels) and the mean of every row.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

import common

CLIPS = ["mp4_h264_98x54_40f.mp4", "webm_vp9_64x64_30f.webm", "mov_mpeg4_120x68_90f.mov",
         "mkv_h264_72x40_25f.mkv"]


def decode_like_torchcodec(path: Path) -> tuple[list[np.ndarray], float]:
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        pts = []
        end = None
        for p in c.demux(s):
            if p.size == 0 and p.pts is None:
                continue  # the flush packet at the end
            t = p.pts if p.pts is not None else p.dts
            pts.append(t)
            e = t + (p.duration or 0)
            end = e if end is None else max(end, e)
        tb = Fraction(s.time_base)
        span = float((end - min(pts)) * tb)
        fps = len(pts) / span if span > 0 else float(s.average_rate)
    with av.open(str(path)) as c:
        frames = {}
        for f in c.decode(video=0):
            frames[f.pts] = f.to_ndarray(format="rgb24")
    order = sorted(pts)
    assert len(frames) == len(order), (path, len(frames), len(order))
    return [frames[t] for t in order], fps


def main(out_dir: Path) -> None:
    from transformers.video_utils import VideoMetadata

    processor = common.load_processor()
    vp = processor.video_processor
    clip_dir = out_dir / "video" / "clips" / "ffmpeg"
    out = []
    for name in CLIPS:
        frames, fps = decode_like_torchcodec(clip_dir / name)
        for max_frames in [None, 5]:
            saved = vp.max_frames
            if max_frames is not None:
                vp.max_frames = max_frames
            try:
                meta = VideoMetadata(total_num_frames=len(frames), fps=fps,
                                     frames_indices=list(range(len(frames))))
                res = vp(videos=[np.stack(frames)], video_metadata=[meta], do_sample_frames=True,
                         return_metadata=True, cap_pixels_per_frame=False, return_tensors="pt")
            finally:
                vp.max_frames = saved
            pv = res["pixel_values_videos"].numpy().astype(np.float32)
            m = res["video_metadata"][0]
            idx = [int(i) for i in m.frames_indices]
            ts = processor._calculate_timestamps(list(idx), m.fps, vp.temporal_patch_size)
            out.append({
                "path": name,
                "max_frames": max_frames,
                "source_frames": len(frames),
                "fps": fps,
                "frame_indices": idx,
                "grid_thw": res["video_grid_thw"][0].tolist(),
                "timestamp_text": [f"<{t:.1f} seconds>" for t in ts],
                "pixel_values_shape": list(pv.shape),
                # The first row as uint8 levels (mean 0.5, std 0.5: level = (x + 1) / 2 * 255).
                "pixel_values_head_levels": [int(x) for x in np.rint((pv[0] + 1) * 127.5)],
                "pixel_values_row_means": [round(float(x), 5) for x in pv.mean(axis=1)],
            })
    import av
    common.write_json(out_dir / "video" / "ffmpeg_cases.json", {
        "about": "transformers 5.23 on the ffmpeg clips decoded with PyAV like torchcodec "
                 "(tools/reference/ffmpeg_video_cases.py)",
        "pyav": av.__version__,
        "pyav_ffmpeg": ".".join(str(x) for x in av.library_versions["libavcodec"]),
        "cases": out,
    })
    print(f"ffmpeg video: {len(out)} cases")
