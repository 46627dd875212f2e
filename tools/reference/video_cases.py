"""Reference data for video in crates/processor: sampled frame indices, `pixel_values_videos`,
`video_grid_thw`, timestamps, expanded `input_ids`, 3-D position ids and the rope delta (transformers 5.23's
Qwen3VLVideoProcessor + Qwen3VLProcessor + get_rope_index).

Writes testdata/video/{clips/*, cases.json, reference.safetensors}. Run through generate.py.

The clips are animated GIF / WebP (lossless) / APNG files and frame directories, decoded here with PIL
(frames converted to RGB) and handed to the processor with their metadata (fps, frame count), the way
transformers receives decoded frames; the Rust side decodes the same files itself, so the comparison is bit
for bit from the file. `pixel_values_videos` are stored as sha256 of their float32 bytes + the first rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import common

MERGE = 2


def frames_pattern(n: int, h: int, w: int, seed: int) -> list[np.ndarray]:
    """n distinct, smooth-ish RGB frames (a moving pattern plus noise)."""
    out = []
    for i in range(n):
        f = common.pattern(h, w, seed=seed * 100 + i, noise=6.0)
        out.append(np.roll(f, shift=i * 3, axis=1))
    return out


def pil_frames(path: Path) -> list[np.ndarray]:
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        return [np.asarray(fr.convert("RGB")).copy() for fr in ImageSequence.Iterator(im)]


def make_clips(clip_dir: Path) -> list[dict]:
    """Write the clips; return [{name, path, fps, note, max_frames?}] in a fixed order."""
    from PIL import Image

    clip_dir.mkdir(parents=True, exist_ok=True)
    out = []

    def gif(name, n, h, w, seed, centis, note, **extra):
        frames = [Image.fromarray(f) for f in frames_pattern(n, h, w, seed)]
        # One palette for all frames, no frame differencing: PIL and the Rust decoder see full frames.
        frames[0].save(clip_dir / f"{name}.gif", save_all=True, append_images=frames[1:], duration=centis * 10,
                       loop=0, optimize=False, disposal=1)
        out.append({"name": name, "path": f"{name}.gif", "fps": 100.0 / centis, "note": note, **extra})

    # Odd frame size, 10 frames at 5 fps (2 s) -> 4 sampled frames.
    gif("gif_33x47_10f", 10, 33, 47, 1, 20, "GIF 33x47 (odd sides, under 32 on one side after nothing), 10 frames at 5 fps")
    # Fewer frames than min_frames: 3 frames -> 3 sampled, padded to 4 with the last.
    gif("gif_short_3f", 3, 40, 64, 2, 50, "GIF, 3 frames at 2 fps: fewer than min_frames, odd count padded")
    # Long: 40 frames at 10 fps (4 s -> 8 at 2 fps), capped by max_frames = 5 (odd).
    gif("gif_long_40f", 40, 36, 36, 3, 10, "GIF, 40 frames at 10 fps, capped by max_frames 5", max_frames=5)

    # A frame directory: 5 frames at 2 fps -> 5 sampled (odd count).
    d = clip_dir / "dir_5f"
    d.mkdir(exist_ok=True)
    for i, f in enumerate(frames_pattern(5, 50, 70, 4)):
        Image.fromarray(f).save(d / f"frame_{i:03d}.png")
    out.append({"name": "dir_5f", "path": "dir_5f", "fps": 2.0, "dir": True,
                "note": "frame directory, 5 PNG frames 50x70, --video-fps 2"})

    # Animated lossless WebP and APNG.
    frames = [Image.fromarray(f) for f in frames_pattern(6, 30, 90, 5)]
    frames[0].save(clip_dir / "webp_6f.webp", save_all=True, append_images=frames[1:], duration=250, loop=0,
                   lossless=True)
    out.append({"name": "webp_6f", "path": "webp_6f.webp", "fps": 4.0, "note": "lossless animated WebP 30x90, 6 frames at 4 fps"})
    frames = [Image.fromarray(f) for f in frames_pattern(8, 48, 40, 6)]
    frames[0].save(clip_dir / "apng_8f.png", save_all=True, append_images=frames[1:], duration=125, loop=0)
    out.append({"name": "apng_8f", "path": "apng_8f.png", "fps": 8.0, "note": "APNG 48x40, 8 frames at 8 fps"})
    return out


def decode_clip(clip_dir: Path, c: dict) -> list[np.ndarray]:
    from PIL import Image

    p = clip_dir / c["path"]
    if c.get("dir"):
        return [np.asarray(Image.open(f).convert("RGB")).copy() for f in sorted(p.iterdir())]
    return pil_frames(p)


def run_video_processor(processor, frames: list[np.ndarray], fps: float, max_frames: int | None):
    from transformers.video_utils import VideoMetadata

    vp = processor.video_processor
    saved = vp.max_frames
    if max_frames is not None:
        vp.max_frames = max_frames
    try:
        video = np.stack(frames)
        meta = VideoMetadata(total_num_frames=len(frames), fps=fps, frames_indices=list(range(len(frames))))
        out = vp(videos=[video], video_metadata=[meta], do_sample_frames=True, return_metadata=True,
                 cap_pixels_per_frame=False, return_tensors="pt")
    finally:
        vp.max_frames = saved
    return out


def clip_cases(processor, clip_dir: Path, clips: list[dict], cases: dict, tensors: dict) -> dict:
    loaded = {}
    out = []
    for c in clips:
        name = c["name"]
        frames = decode_clip(clip_dir, c)
        res = run_video_processor(processor, frames, c["fps"], c.get("max_frames"))
        pv = res["pixel_values_videos"].numpy().astype(np.float32)
        grid = res["video_grid_thw"][0].tolist()
        meta = res["video_metadata"][0]
        idx = [int(i) for i in meta.frames_indices]
        ts = processor._calculate_timestamps(list(idx), meta.fps, processor.video_processor.temporal_patch_size)
        h, w = frames[0].shape[:2]
        tensors[f"video.{name}.pixel_values_head"] = np.ascontiguousarray(pv[:2])
        tensors[f"video.{name}.grid_thw"] = np.array(grid, dtype=np.int64)
        tensors[f"video.{name}.frame_indices"] = np.array(idx, dtype=np.int64)
        sampled = np.stack([frames[i] for i in idx])
        out.append({
            **c,
            "source_frames": len(frames),
            "source_hw": [h, w],
            "grid_thw": grid,
            "frame_indices": idx,
            "timestamps": ts,
            "timestamp_text": [f"<{t:.1f} seconds>" for t in ts],
            "pixel_values_shape": list(pv.shape),
            "pixel_values_sha256": common.sha256(pv),
            "sampled_frames_sha256": common.sha256(sampled),
        })
        loaded[name] = (frames, c)
    cases["clips"] = out
    return loaded


PROMPTS = [
    {"name": "video_only", "content": [["video", "gif_33x47_10f"], ["text", "What happens in this video?"]]},
    {"name": "image_and_video", "content": [["image", "rgb_20x30"], ["video", "dir_5f"], ["text", "Is the picture in the clip?"]]},
    {"name": "video_then_image", "content": [["video", "gif_short_3f"], ["image", "gray_64x96"], ["text", "Compare."]]},
    {"name": "two_videos", "content": [["text", "First:"], ["video", "apng_8f"], ["text", "Second:"], ["video", "gif_long_40f"],
                                       ["text", "Which is longer?"]]},
]


def rope_index(input_ids, mm_token_type_ids, image_grid_thw, video_grid_thw):
    import torch
    from transformers import Qwen3VLConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel

    cfg = Qwen3VLConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "num_key_value_heads": 1, "head_dim": 8, "vocab_size": 151936,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [1, 1, 2], "mrope_interleaved": True}},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "depth": 1, "num_heads": 2, "out_hidden_size": 16,
                       "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "deepstack_visual_indexes": [0],
                       "num_position_embeddings": 16},
        **common.SPECIAL_IDS,
    )
    model = Qwen3VLModel(cfg).eval()
    with torch.no_grad():
        return model.get_rope_index(input_ids, mm_token_type_ids, image_grid_thw=image_grid_thw,
                                    video_grid_thw=video_grid_thw)


def prompt_cases(processor, loaded: dict, cases: dict, tensors: dict) -> None:
    from transformers.video_utils import VideoMetadata

    img_dir = common.TESTDATA / "processor" / "images"
    out = []
    for p in PROMPTS:
        name = p["name"]
        content, images, videos, metas = [], [], [], []
        for kind, val in p["content"]:
            if kind == "text":
                content.append({"type": "text", "text": val})
            elif kind == "image":
                content.append({"type": "image"})
                images.append(common.open_image(img_dir / f"{val}.png"))
            else:
                content.append({"type": "video"})
                frames, c = loaded[val]
                videos.append(np.stack(frames))
                metas.append(VideoMetadata(total_num_frames=len(frames), fps=c["fps"],
                                           frames_indices=list(range(len(frames)))))
        # Per-video max_frames cannot be passed through the processor: only the capped clip sets it, alone.
        caps = {loaded[v][1].get("max_frames") for k, v in p["content"] if k == "video"} - {None}
        assert len(caps) <= 1
        msgs = [{"role": "user", "content": content}]
        rendered = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        vp = processor.video_processor
        saved = vp.max_frames
        if caps:
            vp.max_frames = caps.pop()
        try:
            inputs = processor(text=[rendered], images=images or None, videos=videos, video_metadata=metas,
                               do_sample_frames=True, return_tensors="pt",
                               videos_kwargs={"cap_pixels_per_frame": False})
        finally:
            vp.max_frames = saved
        ids = inputs["input_ids"]
        pos, delta = rope_index(ids, inputs["mm_token_type_ids"], inputs.get("image_grid_thw"),
                                inputs["video_grid_thw"])
        tensors[f"prompt.{name}.input_ids"] = ids[0].numpy().astype(np.int64)
        tensors[f"prompt.{name}.position_ids"] = pos[:, 0].numpy().astype(np.int64)
        tensors[f"prompt.{name}.rope_delta"] = delta.reshape(1).numpy().astype(np.int64)
        tensors[f"prompt.{name}.video_grid_thw"] = inputs["video_grid_thw"].numpy().astype(np.int64)
        out.append({
            "name": name,
            "content": p["content"],
            "rendered": rendered,
            "len": int(ids.shape[1]),
            "rope_delta": int(delta.reshape(-1)[0]),
            "pixel_values_videos_sha256": common.sha256(inputs["pixel_values_videos"].numpy().astype(np.float32)),
        })
    cases["prompts"] = out


def model_case(loaded: dict, out: Path) -> None:
    """Logits of the tiny tied checkpoint (testdata/model-tiny-tied, float32) on an image + two videos prompt
    (the videos before and after the image), for the end-to-end parity test in crates/engine."""
    import torch
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration
    from transformers.video_utils import VideoMetadata

    d = common.TESTDATA / "model-tiny-tied"
    processor = AutoProcessor.from_pretrained(str(d))
    model = Qwen3VLForConditionalGeneration.from_pretrained(str(d), dtype=torch.float32,
                                                            attn_implementation="eager").eval()
    img = common.open_image(common.TESTDATA / "processor" / "images" / "rgb_20x30.png")
    vids, metas = [], []
    for name in ("gif_33x47_10f", "dir_5f"):
        frames, c = loaded[name]
        vids.append(np.stack(frames))
        metas.append(VideoMetadata(total_num_frames=len(frames), fps=c["fps"], frames_indices=list(range(len(frames)))))
    content = [{"type": "video"}, {"type": "image"}, {"type": "video"}, {"type": "text", "text": "What changes?"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    inputs = processor(text=[text], images=[img], videos=vids, video_metadata=metas, do_sample_frames=True,
                       return_tensors="pt", videos_kwargs={"cap_pixels_per_frame": False})
    with torch.no_grad():
        logits = model(**inputs).logits[0].float()
    g = torch.Generator().manual_seed(5)
    cols = torch.unique(torch.cat([torch.randperm(logits.shape[1], generator=g)[:512],
                                   torch.arange(151643, 151669)])).to(torch.int64)
    top = torch.topk(logits, 5, dim=-1)
    t = {
        "input_ids": inputs["input_ids"][0].to(torch.int64),
        "video_grid_thw": inputs["video_grid_thw"].to(torch.int64),
        "image_grid_thw": inputs["image_grid_thw"].to(torch.int64),
        "logits.sample_cols": cols,
        "logits.sample": logits[:, cols].contiguous(),
        "logits.top5_idx": top.indices.to(torch.int64),
    }
    common.save_tensors(out / "model_tied_video.safetensors", t)


def main(out_dir: Path) -> None:
    out = out_dir / "video"
    clip_dir = out / "clips"
    processor = common.load_processor()
    vp = processor.video_processor
    assert (vp.size["shortest_edge"], vp.size["longest_edge"]) == (4096, 25165824), vp.size
    cases: dict = {
        "about": "Reference data for video in crates/processor, written by tools/reference/generate.py "
                 "(video_cases.py). Tensors are in reference.safetensors under video.*, prompt.*.",
    }
    tensors: dict = {}
    clips = make_clips(clip_dir)
    loaded = clip_cases(processor, clip_dir, clips, cases, tensors)
    prompt_cases(processor, loaded, cases, tensors)
    model_case(loaded, out)
    common.save_tensors(out / "reference.safetensors", tensors)
    common.write_json(out / "cases.json", cases)
    print(f"video: {len(clips)} clips, {len(PROMPTS)} prompts -> {out}")
