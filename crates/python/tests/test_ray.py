"""The Ray Data example captions a directory of 4 images in local mode with the tiny checkpoint, and
gives each image the caption a direct `generate` gives it."""
import pathlib
import shutil
import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from conftest import REFDIR, TESTDATA  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
import ray_caption  # noqa: E402


def test_ray_data_captions_a_directory(tmp_path, models):
    from PIL import Image

    imgs = tmp_path / "images"
    imgs.mkdir()
    shutil.copy(REFDIR / "img_64x96.png", imgs / "a.png")
    shutil.copy(REFDIR / "img_96x64.png", imgs / "b.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(imgs / "c.png")
    Image.fromarray(rng.integers(0, 256, (70, 30, 3), dtype=np.uint8)).save(imgs / "d.jpg", quality=95)
    model_dir = str(TESTDATA / "model-tiny-untied")
    # The actors import the example module like the driver does (shipped to them as a py_module).
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"py_modules": [ray_caption]})
    try:
        ds = ray_caption.caption_dataset(str(imgs), model_dir, concurrency=1, num_cpus=1, batch_size=2,
                                         max_tokens=6, prompt="Describe this image.")
        rows = sorted(ds.take_all(), key=lambda r: r["path"])
    finally:
        ray.shutdown()
    assert [pathlib.Path(r["path"]).name for r in rows] == ["a.png", "b.png", "c.png", "d.jpg"]
    m = models["model-tiny-untied"]
    for r in rows:
        # Ray decodes with PIL to RGB arrays: the same pixels as our decoder for PNG; JPEG decoders may
        # differ by a level or two, so only the PNGs are compared exactly.
        assert isinstance(r["caption"], str) and r["caption"]
        if r["path"].endswith(".png"):
            want = m.generate("Describe this image.", images=[r["path"]], max_tokens=6, temperature=0)
            assert r["caption"] == want, r["path"]
