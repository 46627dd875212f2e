"""Shared helpers of the reference tool (owned by helper C; model_cases.py may import them).

Everything here is deterministic: fixed seeds, no timestamps, sorted keys. Nothing downloads anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
TESTDATA = REPO / "testdata"
SPEC_TEMPLATE = REPO / "crates" / "processor" / "src" / "chat_template.qwen3vl-instruct.jinja"
TOKENIZER_DIR = TESTDATA / "tokenizer"
# The assembled Qwen3-VL processor directory (tokenizer.json is a symlink to the real one in testdata/tokenizer).
PROCESSOR_DIR = TESTDATA / "processor" / "checkpoint"

# Special token ids of every Qwen3-VL checkpoint (spec 1.1).
SPECIAL_IDS = {
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
}

# What the image and the video preprocessor configs of every Qwen3-VL checkpoint share (spec 6.1, 6.6).
_PREPROCESSOR_COMMON = {
    "processor_class": "Qwen3VLProcessor",
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "do_rescale": True,
    "do_normalize": True,
    "do_resize": True,
    "do_convert_rgb": True,
}

# preprocessor_config.json of every Qwen3-VL checkpoint (spec 6.1).
PREPROCESSOR_CONFIG = {
    **_PREPROCESSOR_COMMON,
    "image_processor_type": "Qwen2VLImageProcessorFast",
    "size": {"shortest_edge": 65536, "longest_edge": 16777216},
}

# video_preprocessor_config.json of every Qwen3-VL checkpoint (spec 6.6; fps/min_frames/max_frames unset).
VIDEO_PREPROCESSOR_CONFIG = {
    **_PREPROCESSOR_COMMON,
    "video_processor_type": "Qwen3VLVideoProcessor",
    "size": {"shortest_edge": 4096, "longest_edge": 25165824},
    "do_sample_frames": True,
}


def seed_everything(seed: int = 0) -> None:
    """Fix every RNG the reference tool touches."""
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def _c_array(v) -> np.ndarray:
    """A numpy array (or torch tensor, detached to the CPU) as a C-contiguous numpy array."""
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return np.ascontiguousarray(v)


def save_tensors(path: Path, tensors: dict) -> None:
    """Write numpy arrays (or torch tensors) as one safetensors file, keys sorted, no metadata.

    Integer ids are stored as int64, images as uint8, floats as float32 (never converted silently:
    pass arrays of the dtype you mean).
    """
    from safetensors.numpy import save_file

    out = {}
    for k in sorted(tensors):
        v = _c_array(tensors[k])
        assert v.dtype in (np.int64, np.uint8, np.float32, np.int32, np.uint16), (k, v.dtype)
        out[k] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path))


def sha256(arr) -> str:
    """sha256 of the array's exact little-endian bytes in C order."""
    a = _c_array(arr)
    if a.dtype.byteorder == ">":
        a = a.byteswap().view(a.dtype.newbyteorder("<"))
    return hashlib.sha256(a.tobytes()).hexdigest()


def ensure_processor_dir() -> Path:
    """Assemble testdata/processor/checkpoint: a Qwen3-VL processor directory (spec 6.1, 7.1)."""
    d = PROCESSOR_DIR
    d.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        link = d / name
        target = os.path.relpath(TOKENIZER_DIR / name, d)
        if link.is_symlink() or link.exists():
            if link.is_symlink() and os.readlink(link) == target:
                continue
            link.unlink()
        link.symlink_to(target)
    write_json(d / "preprocessor_config.json", PREPROCESSOR_CONFIG)
    write_json(d / "video_preprocessor_config.json", VIDEO_PREPROCESSOR_CONFIG)
    template = SPEC_TEMPLATE.read_text(encoding="utf-8")
    write_json(d / "chat_template.json", {"chat_template": template})
    cfg = {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        **SPECIAL_IDS,
        "text_config": {"bos_token_id": 151643, "eos_token_id": 151645, "model_type": "qwen3_vl_text"},
        "vision_config": {"spatial_merge_size": 2, "patch_size": 16, "temporal_patch_size": 2, "model_type": "qwen3_vl"},
    }
    write_json(d / "config.json", cfg)
    return d


def load_processor():
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(ensure_processor_dir()))


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


def open_image(path: Path):
    """Decode the way this project does (spec audit): PIL open, EXIF transpose, keep alpha; no convert('RGB')."""
    from PIL import Image, ImageOps

    im = Image.open(path)
    im.load()
    return ImageOps.exif_transpose(im)


def pattern(h: int, w: int, seed: int, noise: float = 24.0, checker: tuple[int, int] = (3, 2)) -> np.ndarray:
    """A deterministic (h, w, 3) uint8 test picture: smooth gradients, a checker of fine stripes,
    a diagonal sine and seeded Gaussian noise (high-frequency content that stresses resize)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255.0 * x / max(w - 1, 1)
    g = 255.0 * y / max(h - 1, 1)
    b = 127.5 + 127.5 * np.sin((x + 2 * y) * 0.35)
    img = np.stack([r, g, b], -1)
    cx, cy = checker
    mask = ((x.astype(np.int64) // cx + y.astype(np.int64) // cy) % 2 == 0)[..., None]
    img = np.where(mask, img * 0.6 + 40.0, img)
    img += rng.normal(0.0, noise, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def write_png_raw(path: Path, pixels: np.ndarray, color_type: int, bit_depth: int) -> None:
    """Write a PNG by hand (for 16-bit colour, which PIL cannot write). pixels: (h, w[, c]) uint8/uint16."""
    h, w = pixels.shape[:2]
    if bit_depth == 16:
        data = pixels.astype(">u2").reshape(h, -1).tobytes()
        row_bytes = data and len(data) // h
    else:
        data = pixels.astype(np.uint8).reshape(h, -1).tobytes()
        row_bytes = len(data) // h
    raw = b"".join(b"\x00" + data[i * row_bytes:(i + 1) * row_bytes] for i in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
