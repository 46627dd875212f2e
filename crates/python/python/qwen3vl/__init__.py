"""qwen3vl: Qwen3-VL inference on CPUs (a Rust engine) and SIMD ops with gradients.

    import qwen3vl
    m = qwen3vl.Model("Qwen/Qwen3-VL-2B-Instruct")        # or a checkpoint directory
    print(m.generate("Describe this image.", images=["cat.jpg"]))
    for piece in m.generate("Tell me a story.", stream=True):
        print(piece, end="", flush=True)

    from qwen3vl import ops                                 # numpy ops + backward
    import qwen3vl.torch                                    # autograd modules (needs torch)
"""
import base64
import os
import time
import uuid

from . import _native
from . import ops
from ._native import EngineError, TextStream, cpu, set_simd, set_threads, __version__

__all__ = ["Model", "EngineError", "TextStream", "cpu", "set_simd", "set_threads", "ops", "__version__"]


def _is_pil(obj):
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "convert") and hasattr(obj, "mode")


def _image(obj):
    """An image as the engine takes it: a path (str / os.PathLike), bytes, or a uint8 numpy array.
    A PIL.Image becomes a uint8 array (EXIF orientation applied, as the decoder does for files)."""
    if _is_pil(obj):
        import numpy as np
        from PIL import ImageOps

        img = ImageOps.exif_transpose(obj)
        has_alpha = "A" in img.mode or (img.mode == "P" and "transparency" in img.info)
        return np.asarray(img.convert("RGBA" if has_alpha else "RGB"))
    return obj


def _image_list(images):
    if images is None:
        return []
    if isinstance(images, (str, bytes, bytearray, os.PathLike)) or _is_pil(images) or hasattr(images, "__array_interface__"):
        return [_image(images)]
    return [_image(i) for i in images]


def _image_from_url(url):
    """An OpenAI `image_url`: a data: URL (base64), a file:// URL or a local path."""
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        if not head.endswith(";base64"):
            raise ValueError("image_url: only base64 data: URLs are supported")
        return base64.b64decode(data)
    if url.startswith("file://"):
        return url[len("file://"):]
    if url.startswith(("http://", "https://")):
        raise ValueError(f"image_url {url[:60]!r}: remote URLs are not fetched; pass the bytes or a path")
    return url


def _messages(messages):
    """OpenAI-shaped messages -> ([(role, [text or None for an image])], [images in order])."""
    out, images = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise ValueError(f"messages[{i}]: expected a dict with 'role' and 'content'")
        content = m.get("content")
        parts = []
        if content is None:
            content = ""
        if isinstance(content, str):
            parts.append(content)
        else:
            for j, c in enumerate(content):
                kind = c.get("type") if isinstance(c, dict) else None
                if kind == "text":
                    parts.append(c["text"])
                elif kind == "image_url":
                    u = c["image_url"]
                    images.append(_image_from_url(u["url"] if isinstance(u, dict) else u))
                    parts.append(None)
                elif kind == "image":
                    images.append(_image(c["image"]))
                    parts.append(None)
                else:
                    raise ValueError(f"messages[{i}].content[{j}]: expected a part of type text, image_url or image")
        out.append((str(m["role"]), parts))
    return out, images


def _finish(reason):
    return "stop" if reason in ("eos", "stop") else reason


class Model:
    """A Qwen3-VL checkpoint loaded by the Rust engine.

    path: a checkpoint directory or a Hugging Face Hub id (``owner/name[@revision]``).
    threads: worker threads (None: all cores). precision: "fast" (bf16 dot products where the CPU has
    them) or "f32". quant: None or "q8" (quantize the text decoder at load).
    """

    def __init__(self, path, threads=None, precision="fast", quant=None):
        self._m = _native.Model(os.fspath(path), threads, precision, quant)

    @property
    def path(self):
        return self._m.path

    @property
    def context_len(self):
        return self._m.context_len

    def _user(self, prompt, images, system):
        msgs = [] if system is None else [("system", [system])]
        imgs = _image_list(images)
        msgs.append(("user", [None] * len(imgs) + [prompt]))
        return msgs, imgs

    def generate(self, prompt, images=None, system=None, max_tokens=None, temperature=None, top_p=None,
                 top_k=None, seed=None, stop=None, stream=False):
        """Answer `prompt` about `images` (paths, bytes, PIL images or uint8 arrays; the images come
        first in the user message). Sampling defaults come from the checkpoint's generation_config.json;
        temperature=0 is greedy. Returns the text, or with stream=True an iterator of text pieces (its
        ``result`` holds the answer dict once exhausted). Ctrl-C stops the generation."""
        msgs, imgs = self._user(prompt, images, system)
        r = self._m._run(msgs, imgs, max_tokens, temperature, top_p, top_k, seed, list(stop or []), stream)
        return r if stream else r["text"]

    def chat(self, messages, max_tokens=None, temperature=None, top_p=None, top_k=None, seed=None, stop=None,
             stream=False):
        """OpenAI-shaped chat: messages like the Chat Completions API (content a string or a list of
        {"type": "text"}, {"type": "image_url", "image_url": {"url": data:/file:/path}} or
        {"type": "image", "image": <path, bytes, PIL.Image, array>} parts). Returns a chat.completion dict
        (the choice also has ``token_ids``), or with stream=True an iterator of chat.completion.chunk dicts."""
        msgs, imgs = _messages(messages)
        cid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), os.fspath(self.path)
        r = self._m._run(msgs, imgs, max_tokens, temperature, top_p, top_k, seed, list(stop or []), stream)
        if stream:
            return self._chunks(r, cid, created, model)
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": r["text"]},
                "finish_reason": _finish(r["finish_reason"]),
                "token_ids": r["token_ids"],
            }],
            "usage": {
                "prompt_tokens": r["prompt_tokens"],
                "completion_tokens": r["completion_tokens"],
                "total_tokens": r["prompt_tokens"] + r["completion_tokens"],
            },
        }

    @staticmethod
    def _chunks(stream, cid, created, model):
        def chunk(delta, finish):
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        yield chunk({"role": "assistant", "content": ""}, None)
        for piece in stream:
            yield chunk({"content": piece}, None)
        yield chunk({}, _finish(stream.result["finish_reason"]))

    def generate_batch(self, prompts, images=None, system=None, max_tokens=None, temperature=None, top_p=None,
                       top_k=None, seed=None, stop=None):
        """Answer several prompts together through the batched decode (one pass over the weights per step
        for all of them). images: None, or one entry per prompt (an image, a list of images, or None).
        max_tokens defaults to the checkpoint's max_new_tokens, else 256. Returns the texts in order."""
        if images is None:
            images = [None] * len(prompts)
        if len(images) != len(prompts):
            raise ValueError(f"images: {len(images)} entries for {len(prompts)} prompts")
        reqs = [self._user(p, im, system) for p, im in zip(prompts, images)]
        out = self._m._run_batch(reqs, max_tokens, temperature, top_p, top_k, seed, list(stop or []))
        return [r["text"] for r in out]

    def image_features(self, image):
        """The merged vision tokens of one image: float32 (n_tokens, hidden), what the decoder receives in
        place of the image's placeholder tokens."""
        return self._m.image_features(_image(image))
