"""qwen3vl.Model on the tiny reference checkpoints: greedy ids equal transformers', streaming, every image
input type, OpenAI-shaped chat, batched decode, image features, Ctrl-C, and bad input."""
import io
import os
import pathlib
import signal
import threading
import time

import numpy as np
import pytest

import qwen3vl
from conftest import REFDIR, TESTDATA

IMAGE = REFDIR / "img_64x96.png"
IMAGE_PAD = 151655


def test_greedy_ids_match_transformers(cases, models):
    assert len(cases) >= 6
    images_seen = 0
    for name, c in cases.items():
        m = models[c["model_dir"]]
        parts = [{"type": "image", "image": str(REFDIR / f)} for f in c["images"]]
        parts.append({"type": "text", "text": c["prompt"]})
        images_seen += len(c["images"])
        max_new = c["greedy_max_new_tokens"]
        r = m.chat([{"role": "user", "content": parts}], max_tokens=max_new, temperature=0)
        choice = r["choices"][0]
        assert choice["token_ids"] == c["greedy_new_ids"], name
        assert r["usage"]["prompt_tokens"] == len(c["input_ids"]), name
        assert r["usage"]["completion_tokens"] == len(c["greedy_new_ids"]), name
        # generate() is the same request path: the same text.
        text = m.generate(c["prompt"], images=[REFDIR / f for f in c["images"]], max_tokens=max_new, temperature=0)
        assert text == choice["message"]["content"], name
    assert images_seen >= 2


def test_stream_pieces_join_to_the_same_text(models):
    m = models["model-tiny-untied"]
    kw = dict(images=[IMAGE], max_tokens=12, temperature=0)
    full = m.generate("Describe this image.", **kw)
    stream = m.generate("Describe this image.", stream=True, **kw)
    pieces = list(stream)
    assert len(pieces) >= 2
    assert "".join(pieces) == full
    assert stream.result["text"] == full
    assert stream.result["completion_tokens"] == 12
    chunks = list(m.chat([{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0, stream=True))
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed == m.generate("Hi", max_tokens=6, temperature=0)


def _image_forms():
    from PIL import Image

    data = IMAGE.read_bytes()
    pil = Image.open(io.BytesIO(data))
    rgb = np.asarray(pil.convert("RGB"))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    return {
        "str": str(IMAGE),
        "pathlib": IMAGE,
        "bytes": data,
        "pil": pil,
        "numpy_rgb": rgb,
        "numpy_rgba": rgba,
        "numpy_noncontiguous": np.ascontiguousarray(rgb[:, ::-1])[:, ::-1],
        "data_url": None,  # through chat below
    }


def test_every_image_input_type_gives_the_same_answer(models):
    m = models["model-tiny-untied"]
    forms = _image_forms()
    want = m.generate("Describe this image.", images=[forms["str"]], max_tokens=8, temperature=0)
    feats = m.image_features(forms["str"])
    for name, img in forms.items():
        if img is None:
            continue
        got = m.generate("Describe this image.", images=[img], max_tokens=8, temperature=0)
        assert got == want, name
        np.testing.assert_array_equal(m.image_features(img), feats, err_msg=name)
    import base64

    url = "data:image/png;base64," + base64.b64encode(forms["bytes"]).decode()
    r = m.chat([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": "Describe this image."}]}], max_tokens=8, temperature=0)
    assert r["choices"][0]["message"]["content"] == want


def test_image_features_are_the_merged_vision_tokens(cases, models):
    c = cases["untied_image1"]
    m = models[c["model_dir"]]
    f = m.image_features(REFDIR / c["images"][0])
    assert f.dtype == np.float32 and f.ndim == 2
    assert f.shape[0] == c["input_ids"].count(IMAGE_PAD)
    import json

    hidden = json.loads((TESTDATA / c["model_dir"] / "config.json").read_text())["text_config"]["hidden_size"]
    assert f.shape[1] == hidden
    assert np.isfinite(f).all() and f.std() > 0


def test_chat_is_openai_shaped(models):
    m = models["model-tiny-tied"]
    r = m.chat([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
    ], max_tokens=4, temperature=0)
    assert r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-")
    (choice,) = r["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    u = r["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert u["completion_tokens"] == len(choice["token_ids"]) <= 4
    # system= in generate is the same system message.
    assert m.generate("Hello", system="You are terse.", max_tokens=4, temperature=0) == choice["message"]["content"]


def test_generate_batch_equals_sequential_generates(models):
    m = models["model-tiny-untied"]
    prompts = ["Describe this image.", "Hello! Write one short sentence about the sea.", "What is in the picture?"]
    images = [[IMAGE], None, REFDIR / "img_96x64.png"]
    got = m.generate_batch(prompts, images=images, max_tokens=8, temperature=0)
    want = [m.generate(p, images=im, max_tokens=8, temperature=0) for p, im in zip(prompts, images)]
    assert got == want


def test_sampling_with_seed_is_reproducible(models):
    m = models["model-tiny-untied"]
    kw = dict(max_tokens=10, temperature=1.0, top_p=0.95, top_k=50)
    a = m.generate("Tell me a story.", seed=7, **kw)
    assert a == m.generate("Tell me a story.", seed=7, **kw)
    assert a != m.generate("Tell me a story.", seed=8, **kw)


def test_stop_strings_cut_the_answer(models):
    m = models["model-tiny-untied"]
    full = m.generate("Hello! Write one short sentence about the sea.", max_tokens=8, temperature=0)
    assert len(full) >= 4
    stop = full[2:4]
    cut = m.generate("Hello! Write one short sentence about the sea.", max_tokens=8, temperature=0, stop=[stop])
    assert cut == full[: full.index(stop)]


def test_ctrl_c_stops_a_generation(models):
    m = models["model-tiny-untied"]
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread")
    # A runner started in the background by a non-interactive shell inherits SIGINT ignored, and Python
    # then leaves it ignored: install the usual KeyboardInterrupt handler for this test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    t0 = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            m.generate("Tell me a long story.", max_tokens=100000, temperature=0)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - t0 < 10
    # The model is usable afterwards.
    assert m.generate("Hi", max_tokens=2, temperature=0)


def test_missing_model_directory_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        qwen3vl.Model(tmp_path / "nope")
    with pytest.raises(qwen3vl.EngineError, match="config.json"):
        qwen3vl.Model(tmp_path)


def test_bad_arguments_are_clear_errors(models, tmp_path):
    m = models["model-tiny-untied"]
    with pytest.raises(qwen3vl.EngineError, match="(?i)image|decod|format"):
        m.generate("What is this?", images=[b"definitely not an image"], max_tokens=2)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(qwen3vl.EngineError):
        m.image_features(bad)
    with pytest.raises(qwen3vl.EngineError):
        m.generate("x", images=[tmp_path / "missing.png"], max_tokens=2)
    with pytest.raises(TypeError, match="image 0"):
        m.generate("x", images=[12345], max_tokens=2)
    with pytest.raises(TypeError, match="uint8"):
        m.generate("x", images=[np.zeros((8, 8, 3), np.float32)], max_tokens=2)
    with pytest.raises(ValueError, match="shape"):
        m.generate("x", images=[np.zeros((8, 8, 5), np.uint8)], max_tokens=2)
    with pytest.raises(ValueError, match="max_tokens"):
        m.generate("x", max_tokens=0)
    with pytest.raises(ValueError, match="temperature|top_p"):
        m.generate("x", max_tokens=2, temperature=-1.0)
    with pytest.raises(ValueError, match="precision"):
        qwen3vl.Model(TESTDATA / "model-tiny-tied", precision="int3")
    with pytest.raises(ValueError, match="content"):
        m.chat([{"role": "user", "content": [{"type": "audio"}]}])
    with pytest.raises(qwen3vl.EngineError, match="context|tokens"):
        m.generate("x", max_tokens=10**9)
