"""A minimal Chrome DevTools Protocol client over `--remote-debugging-pipe` (standard library only).

Chromium reads commands from fd 3 and writes replies and events to fd 4, each a JSON object followed by a
NUL byte. `Browser` starts a headless Chromium with a fresh profile, attaches to its page and offers
`call(method, **params)` plus a way to wait for events.
"""

import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
]


def chromium_path():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    raise RuntimeError("no chromium on PATH (tools/ci/server-tests.sh installs Debian's chromium)")


class CdpError(RuntimeError):
    pass


class Browser:
    def __init__(self, width=1100, height=760):
        self.profile = tempfile.mkdtemp(prefix="qwen3vl-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        hi = max(to_chrome_r, from_chrome_w, 4) + 1
        # fd 3 and fd 4 of the child are the pipe ends; a shell moves them there before exec.
        cmd = [
            "bash",  # (dash takes no fd numbers above 9)
            "-c",
            # (through two free fds above both first: a pipe end may itself be fd 3 or 4)
            f"exec {hi}<&{to_chrome_r} {hi + 1}>&{from_chrome_w}; "
            f'exec 3<&{hi} 4>&{hi + 1} {hi}<&- {hi + 1}>&-; exec "$@"',
            "bash",
            chromium_path(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={self.profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        self.log = open(os.path.join(self.profile, "chromium.log"), "wb")
        self.proc = subprocess.Popen(
            cmd,
            pass_fds=(to_chrome_r, from_chrome_w),
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next_id = 0
        self._lock = threading.Lock()
        self._replies = {}
        self._reply_ready = threading.Condition(self._lock)
        self.events = queue.Queue()
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        self.session = None
        targets = self.call("Target.getTargets", session=False)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call(
            "Target.attachToTarget", session=False, targetId=page["targetId"], flatten=True
        )["sessionId"]

    def _read_loop(self):
        buf = b""
        while True:
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                break
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._lock:
                        self._replies[msg["id"]] = msg
                        self._reply_ready.notify_all()
                else:
                    self.events.put(msg)
        with self._lock:
            self._replies[None] = {"error": {"message": "chromium closed the pipe"}}
            self._reply_ready.notify_all()

    def call(self, method, session=True, timeout=30, **params):
        with self._lock:
            self._next_id += 1
            mid = self._next_id
        msg = {"id": mid, "method": method, "params": params}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._lock:
            while mid not in self._replies:
                if None in self._replies:
                    raise CdpError(f"{method}: chromium exited ({self.proc.poll()})")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CdpError(f"{method}: no reply in {timeout} s")
                self._reply_ready.wait(left)
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method, timeout=30, predicate=lambda params: True, keep=None):
        """Waits for an event named `method` whose params satisfy `predicate`; other events go to `keep`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CdpError(f"no {method} event in {timeout} s")
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if ev.get("method") == method and predicate(ev.get("params", {})):
                return ev["params"]
            if keep is not None:
                keep.append(ev)

    def evaluate(self, expression, await_promise=False):
        r = self.call(
            "Runtime.evaluate",
            expression=expression,
            returnByValue=True,
            awaitPromise=await_promise,
        )
        if "exceptionDetails" in r:
            raise CdpError(f"evaluating {expression!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expression, timeout=60, interval=0.1):
        """Polls a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.evaluate(expression)
            if v:
                return v
            if time.monotonic() > deadline:
                raise CdpError(f"{expression!r} still falsy after {timeout} s")
            time.sleep(interval)

    def navigate(self, url, timeout=30):
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired", timeout=timeout)

    def screenshot(self, path):
        import base64

        data = self.call("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        try:
            self.call("Browser.close", session=False, timeout=5)
        except CdpError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)
