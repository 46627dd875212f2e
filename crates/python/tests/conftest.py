import json
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
TESTDATA = REPO / "testdata"
REFDIR = TESTDATA / "model-reference"


@pytest.fixture(scope="session")
def cases():
    """The greedy cases transformers generated for the tiny checkpoints (tools/reference/model_cases.py)."""
    return json.loads((REFDIR / "cases.json").read_text())["cases"]


@pytest.fixture(scope="session")
def models():
    """The two tiny reference checkpoints, loaded once, in float32 precision (parity with transformers)."""
    import qwen3vl

    return {
        name: qwen3vl.Model(TESTDATA / name, threads=2, precision="f32")
        for name in ("model-tiny-tied", "model-tiny-untied")
    }
