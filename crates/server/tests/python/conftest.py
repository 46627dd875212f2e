"""Fixtures for the tests of `qwen3vl serve` through real clients (the `openai` package, headless Chromium).

The server under test is `target/release/qwen3vl` (or $QWEN3VL_BIN) on the tiny checkpoint
testdata/model-tiny-tied, listening on 127.0.0.1. tools/ci/server-tests.sh starts the main one and passes
its URL in $QWEN3VL_SERVER_URL; without it the `server` fixture starts its own. Servers with other options
(an API key, one slot and a short queue) are started here, each on a free port, and stopped after the tests.
"""

import base64
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[4]
MODEL = REPO / "testdata" / "model-tiny-tied"


def qwen3vl_bin():
    return os.environ.get("QWEN3VL_BIN", str(REPO / "target" / "release" / "qwen3vl"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url, timeout=5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


class Server:
    """A `qwen3vl serve` child process on a free port of 127.0.0.1."""

    def __init__(self, *extra):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="qwen3vl-serve-", suffix=".log", delete=False)
        cmd = [qwen3vl_bin(), "serve", "--model", str(MODEL), "--host", "127.0.0.1",
               "--port", str(self.port), "--weight-cache", "off", *extra]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{' '.join(cmd)} exited {self.proc.returncode}:\n{self.output()}")
            try:
                if http_status(self.url + "/health") == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{' '.join(cmd)} not healthy in 120 s:\n{self.output()}")
            time.sleep(0.1)

    def output(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()[-4000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


class External:
    """The server the runner script started."""

    def __init__(self, url):
        self.url = url.rstrip("/")

    def stop(self):
        pass


@pytest.fixture(scope="session")
def server():
    url = os.environ.get("QWEN3VL_SERVER_URL")
    s = External(url) if url else Server()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def png_bytes(width, height, color=(200, 60, 60)):
    """A solid-colour RGB PNG, written with the standard library."""
    raw = b"".join(b"\0" + bytes(color) * width for _ in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def data_uri(data, mime="image/png"):
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="session")
def image_png(tmp_path_factory):
    """A 64x48 PNG file (a few image tokens on the tiny model) and its data URI."""
    data = png_bytes(64, 48)
    path = tmp_path_factory.mktemp("img") / "red.png"
    path.write_bytes(data)
    return path, data_uri(data)
