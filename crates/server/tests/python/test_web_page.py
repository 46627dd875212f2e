"""The chat page at `/` in a real headless Chromium, driven over the DevTools protocol (cdp.py).

Loads the page from `qwen3vl serve` on the tiny checkpoint, attaches an image through the file picker,
sends a message and watches the streamed answer arrive; checks what the page sent (an image_url part
with a data: URI, stream=true with include_usage) and that model text is never parsed as HTML.
A screenshot of the finished conversation is written to $QWEN3VL_SCREENSHOT_DIR when set.
"""

import base64
import json
import os

import pytest

from cdp import Browser


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    yield b
    b.close()


@pytest.fixture
def page(browser, server):
    while not browser.events.empty():  # events of an earlier test
        browser.events.get_nowait()
    browser.call("Network.enable")
    browser.navigate(server.url + "/")
    browser.wait_for("document.getElementById('status').className === 'ready'", timeout=30)
    return browser


def js(s):
    return json.dumps(s)


def test_page_is_served_without_external_resources(server):
    import urllib.request

    with urllib.request.urlopen(server.url + "/") as r:
        assert r.status == 200
        assert r.headers.get_content_type() == "text/html"
        html = r.read().decode()
    assert "<script" in html and "/v1/chat/completions" in html
    # One static page: nothing fetched from elsewhere.
    for ref in ('src="http', "src='http", 'href="http', "@import", "//cdn"):
        assert ref not in html


def test_send_message_with_image_streams_answer(page, image_png, tmp_path):
    path, _ = image_png
    # Greedy and short, set through the settings panel's controls.
    page.evaluate("document.getElementById('toggle-settings').click()")
    page.evaluate("""(() => { const t = document.getElementById('temperature'); t.value = '0';
                     t.dispatchEvent(new Event('input'));
                     const m = document.getElementById('max_tokens'); m.value = '24';
                     m.dispatchEvent(new Event('input')); })()""")
    # 1. Attach an image through the file picker: a preview appears.
    root = page.call("DOM.getDocument")["root"]["nodeId"]
    node = page.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
    page.call("DOM.setFileInputFiles", nodeId=node, files=[str(path)])
    page.wait_for("document.querySelectorAll('#attachments img').length === 1")
    assert page.evaluate("document.querySelector('#attachments img').src").startswith(
        "data:image/png;base64,")
    # 2. Type and send (Enter in the text box).
    page.evaluate("document.getElementById('input').focus()")
    page.call("Input.insertText", text="What colour is this square?")
    page.call("Input.dispatchKeyEvent", type="keyDown", key="Enter", code="Enter",
              windowsVirtualKeyCode=13, text="\r")
    page.call("Input.dispatchKeyEvent", type="keyUp", key="Enter", code="Enter", windowsVirtualKeyCode=13)
    # 3. The request the page sent.
    sent = page.wait_event(
        "Network.requestWillBeSent", timeout=30,
        predicate=lambda p: p["request"]["url"].endswith("/v1/chat/completions"))
    body = sent["request"].get("postData")
    if body is None:
        body = page.call("Network.getRequestPostData", requestId=sent["requestId"])["postData"]
    req = json.loads(body)
    assert req["stream"] is True and req["stream_options"] == {"include_usage": True}
    assert req["temperature"] == 0 and req["max_tokens"] == 24
    parts = req["messages"][-1]["content"]
    images = [p for p in parts if p["type"] == "image_url"]
    assert len(images) == 1
    assert base64.b64decode(images[0]["image_url"]["url"].split(",", 1)[1]) == path.read_bytes()
    assert {"type": "text", "text": "What colour is this square?"} in parts
    resp = page.wait_event("Network.responseReceived", timeout=60,
                           predicate=lambda p: p["requestId"] == sent["requestId"])
    assert resp["response"]["status"] == 200
    assert resp["response"]["mimeType"] == "text/event-stream"
    # 4. The answer appears and the stats line closes it.
    stats = page.wait_for(
        "(document.querySelector('.msg.assistant .stats') || {}).textContent", timeout=120)
    answer = page.evaluate("document.querySelector('.msg.assistant .bubble').textContent")
    assert answer.strip(), "empty assistant text"
    assert "token" in stats and "tok/s" in stats, stats
    assert page.evaluate("document.querySelectorAll('.msg.user .images img').length") == 1
    assert page.evaluate("document.querySelectorAll('.msg.error').length") == 0
    assert page.evaluate("document.getElementById('send').hidden") is False
    shots = os.environ.get("QWEN3VL_SCREENSHOT_DIR")
    page.screenshot(os.path.join(shots, "chat.png") if shots else str(tmp_path / "chat.png"))
    # 5. A second turn resends the first with its answer.
    page.evaluate("document.getElementById('input').value = 'And its shape?'")
    page.evaluate("document.getElementById('send').click()")
    sent2 = page.wait_event(
        "Network.requestWillBeSent", timeout=30,
        predicate=lambda p: p["request"]["url"].endswith("/v1/chat/completions"))
    body2 = sent2["request"].get("postData") or page.call(
        "Network.getRequestPostData", requestId=sent2["requestId"])["postData"]
    roles = [m["role"] for m in json.loads(body2)["messages"]]
    assert roles == ["user", "assistant", "user"]
    page.wait_for("document.querySelectorAll('.msg.assistant .stats').length === 2 && "
                  "document.querySelectorAll('.msg.assistant .stats')[1].textContent", timeout=120)


def test_a_video_goes_as_a_video_url_part(page):
    """A video file (video/*) is attached as it is and sent as a video_url part; the server answers it
    (with its ffmpeg feature) or refuses it with a 400 the page shows (without)."""
    root_dir = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..")
    path = os.path.realpath(os.path.join(root_dir, "testdata", "video", "clips", "ffmpeg",
                                         "mp4_h264_98x54_40f.mp4"))
    root = page.call("DOM.getDocument")["root"]["nodeId"]
    node = page.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
    page.call("DOM.setFileInputFiles", nodeId=node, files=[path])
    page.wait_for("document.querySelectorAll('#attachments video').length === 1")
    assert page.evaluate("document.querySelectorAll('#attachments img').length") == 0
    page.evaluate("document.getElementById('max_tokens').value = '4'")
    page.evaluate("document.getElementById('input').value = 'What happens?'")
    page.evaluate("document.getElementById('send').click()")
    sent = page.wait_event(
        "Network.requestWillBeSent", timeout=30,
        predicate=lambda p: p["request"]["url"].endswith("/v1/chat/completions"))
    body = sent["request"].get("postData") or page.call(
        "Network.getRequestPostData", requestId=sent["requestId"])["postData"]
    parts = json.loads(body)["messages"][-1]["content"]
    videos = [p for p in parts if p["type"] == "video_url"]
    assert len(videos) == 1 and not [p for p in parts if p["type"] == "image_url"]
    url = videos[0]["video_url"]["url"]
    assert url.startswith("data:video/mp4;base64,")
    with open(path, "rb") as f:
        assert base64.b64decode(url.split(",", 1)[1]) == f.read()
    resp = page.wait_event("Network.responseReceived", timeout=60,
                           predicate=lambda p: p["requestId"] == sent["requestId"])
    status = resp["response"]["status"]
    assert status in (200, 400), status
    assert page.evaluate("document.querySelectorAll('.msg.user .images video').length") == 1
    if status == 400:
        # a build without FFmpeg: the refusal names the part, on the page
        err = page.wait_for("(document.querySelector('.msg.error') || {}).textContent", timeout=30)
        assert "video_url" in err, err
    else:
        page.wait_for("(document.querySelector('.msg.assistant .stats') || {}).textContent", timeout=120)


def test_stop_button_aborts_the_stream(page, server):
    page.evaluate("document.getElementById('toggle-settings').click()")
    page.evaluate("""(() => { const m = document.getElementById('max_tokens'); m.value = '4000';
                     m.dispatchEvent(new Event('input')); })()""")
    page.evaluate("document.getElementById('input').value = 'Tell me a long story.'")
    page.evaluate("document.getElementById('send').click()")
    page.wait_for("!document.getElementById('stop').hidden", timeout=10)
    # Stop once the answer is streaming.
    page.wait_for("document.querySelector('.msg.assistant .bubble').textContent.length > 0", timeout=60)
    page.evaluate("document.getElementById('stop').click()")
    stats = page.wait_for("(document.querySelector('.msg.assistant .stats') || {}).textContent",
                          timeout=30)
    assert stats.endswith("stopped"), stats
    assert page.evaluate("document.getElementById('stop').hidden") is True
    assert page.evaluate("document.querySelectorAll('.msg.error').length") == 0
    # The server let go of the aborted request: the next message is answered.
    page.evaluate("document.getElementById('max_tokens').value = '4'")
    page.evaluate("document.getElementById('input').value = 'Short one.'")
    page.evaluate("document.getElementById('send').click()")
    page.wait_for("document.querySelectorAll('.msg.assistant .stats').length === 2 && "
                  "document.querySelectorAll('.msg.assistant .stats')[1].textContent", timeout=60)
    assert page.evaluate("document.querySelectorAll('.msg.error').length") == 0


def test_markdown_renderer_never_makes_html_from_model_text(page):
    evil = ("**bold** <img src=x onerror=\"window.__pwned=1\"> <script>window.__pwned=2</script>\n\n"
            "```html\n<b>not bold</b>\n```\n- item `a<b>`\n\n[x](javascript:alert(1)) [ok](https://example.org)")
    out = page.evaluate(f"""(() => {{
        const d = document.createElement('div');
        renderMarkdown({js(evil)}, d);
        return {{ imgs: d.querySelectorAll('img, script, b').length,
                  strong: d.querySelectorAll('strong').length,
                  pre: d.querySelector('pre code') && d.querySelector('pre code').textContent,
                  li: d.querySelectorAll('li').length,
                  links: [...d.querySelectorAll('a')].map(a => a.getAttribute('href')),
                  text: d.textContent, pwned: window.__pwned || 0 }};
    }})()""")
    assert out["imgs"] == 0 and out["pwned"] == 0
    assert out["strong"] == 1 and out["li"] == 1
    assert out["pre"] == "<b>not bold</b>"
    assert "<img src=x" in out["text"] and "<script>" in out["text"]
    assert out["links"] == ["https://example.org"]


def test_large_images_are_scaled_down_before_sending(page):
    dims = page.evaluate("""(async () => {
        const c = document.createElement('canvas'); c.width = 4000; c.height = 1000;
        c.getContext('2d').fillRect(0, 0, 10, 10);
        const big = await shrink(c.toDataURL('image/png'));
        const img = new Image(); img.src = big; await img.decode();
        const keep = document.createElement('canvas'); keep.width = 30; keep.height = 20;
        const same = keep.toDataURL('image/png');
        return [img.naturalWidth, img.naturalHeight, big.slice(0, 15), (await shrink(same)) === same];
    })()""", await_promise=True)
    assert dims == [2048, 512, "data:image/jpeg", True]
