"""`qwen3vl serve` through the official `openai` Python client, on the tiny checkpoint.

Each test states what a client sees: response shapes, streaming with usage, images as data URIs, greedy
answers equal to `qwen3vl generate`'s, n, logprobs, structured output, and errors as APIStatusError with
the right status and a message naming the problem — with the server still serving afterwards.
"""

import json
import math
import subprocess
import threading
import time
import urllib.error
import urllib.request

import jsonschema
import openai
import pytest

from conftest import MODEL, Server, data_uri, png_bytes, qwen3vl_bin

PROMPT = "Describe a red square in one sentence."


def ask(client, content=PROMPT, **kw):
    kw.setdefault("max_tokens", 12)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": content}], **kw
    )


def with_image(uri, text=PROMPT):
    return [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": text}]


def assert_still_serving(client):
    r = ask(client, max_tokens=2)
    assert r.choices[0].message.content is not None
    assert r.usage.completion_tokens >= 1


def api_error(call):
    with pytest.raises(openai.APIStatusError) as e:
        call()
    return e.value


# ---- shapes ------------------------------------------------------------------------------------------


def test_models_lists_the_loaded_model(client, server):
    models = client.models.list().data
    assert len(models) >= 1 and models[0].id
    assert urllib.request.urlopen(server.url + "/health").status == 200


def test_non_streaming_response_shape(client):
    r = ask(client)
    assert r.object == "chat.completion"
    assert r.id and r.created > 0 and r.model
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0 and c.message.role == "assistant"
    assert isinstance(c.message.content, str) and c.message.content
    assert c.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 5
    assert 1 <= u.completion_tokens <= 12
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    if c.finish_reason == "length":
        assert u.completion_tokens == 12


def test_max_completion_tokens_is_honoured(client):
    r = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": PROMPT}], max_completion_tokens=3,
        temperature=0)
    assert r.usage.completion_tokens <= 3


def test_streaming_with_usage_matches_non_streaming(client):
    full = ask(client, max_tokens=16)
    chunks = list(ask(client, max_tokens=16, stream=True, stream_options={"include_usage": True}))
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert len({ch.id for ch in chunks}) == 1
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    # The usage chunk comes last, with no choices, and counts what the non-streaming answer counts.
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (
        full.usage.prompt_tokens, full.usage.completion_tokens)
    assert all(ch.usage is None for ch in chunks[:-1])


def test_streaming_without_include_usage_has_no_usage_chunk(client):
    chunks = list(ask(client, max_tokens=4, stream=True))
    assert chunks and all(ch.usage is None for ch in chunks)


def test_image_as_data_uri_adds_image_tokens(client, image_png):
    _, uri = image_png
    text_only = ask(client, max_tokens=4)
    r = ask(client, content=with_image(uri), max_tokens=4)
    assert r.choices[0].message.content
    # A 64x48 image is at least one merged 32x32 patch of image tokens plus the vision start/end markers.
    assert r.usage.prompt_tokens >= text_only.usage.prompt_tokens + 3


def test_two_images_count_twice(client, image_png):
    _, uri = image_png
    one = ask(client, content=with_image(uri), max_tokens=2)
    two = ask(client, content=[{"type": "image_url", "image_url": {"url": uri}}] + with_image(uri),
              max_tokens=2)
    assert two.usage.prompt_tokens > one.usage.prompt_tokens


def test_timings_extension(server, image_png):
    body = {"model": "tiny", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4,
            "temperature": 0}
    req = urllib.request.Request(server.url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        r = json.load(resp)
    timings = r.get("timings")
    if timings is None:
        pytest.skip("the server sends no `timings` extension")
    assert any(isinstance(v, (int, float)) and v > 0 for v in timings.values()), timings
    # The wait for a slot is reported apart from the prompt's own time.
    assert timings["queue_ms"] >= 0 and timings["prompt_ms"] > 0, timings


# ---- the same answers as the command line -------------------------------------------------------------


def generate_cli(prompt, max_tokens, image=None):
    cmd = [qwen3vl_bin(), "generate", "--model", str(MODEL), "--prompt", prompt,
           "--temperature", "0", "--max-tokens", str(max_tokens)]
    if image:
        cmd += ["--image", str(image)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.endswith("\n")
    return out[:-1]


@pytest.mark.parametrize("with_img", [False, True], ids=["text", "image"])
def test_greedy_equals_generate(client, image_png, with_img):
    path, uri = image_png
    cli = generate_cli(PROMPT, 20, image=path if with_img else None)
    r = ask(client, content=with_image(uri) if with_img else PROMPT, max_tokens=20)
    assert r.choices[0].message.content == cli


# ---- n, logprobs, structured output -------------------------------------------------------------------


def test_n_two_choices(client):
    r = ask(client, n=2, temperature=1.0, seed=7, max_tokens=8)
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content for c in r.choices)
    assert r.usage.completion_tokens >= 2
    # Greedy choices are the same answer twice.
    g = ask(client, n=2, max_tokens=8)
    assert g.choices[0].message.content == g.choices[1].message.content


def test_n_two_streaming(client):
    chunks = list(ask(client, n=2, temperature=1.0, seed=3, max_tokens=6, stream=True))
    texts = {0: "", 1: ""}
    for ch in chunks:
        for c in ch.choices:
            texts[c.index] += c.delta.content or ""
    assert texts[0] and texts[1]


def test_logprobs_greedy(client):
    r = ask(client, logprobs=True, top_logprobs=3, max_tokens=6)
    c = r.choices[0]
    lp = c.logprobs.content
    assert len(lp) == r.usage.completion_tokens
    assert "".join(t.token for t in lp) == c.message.content
    for t in lp:
        assert t.logprob <= 0 and math.isfinite(t.logprob)
        assert len(t.top_logprobs) == 3
        tops = [x.logprob for x in t.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert t.top_logprobs[0].token == t.token
        assert abs(t.top_logprobs[0].logprob - t.logprob) < 1e-4
        assert sum(math.exp(x) for x in tops) <= 1.0 + 1e-4


def test_logprobs_streaming(client):
    chunks = list(ask(client, logprobs=True, top_logprobs=2, max_tokens=4, stream=True))
    entries = [t for ch in chunks if ch.choices and ch.choices[0].logprobs
               for t in ch.choices[0].logprobs.content]
    assert entries and all(len(t.top_logprobs) == 2 for t in entries)


SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "square": {"type": "boolean"},
    },
    "required": ["color", "count", "square"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_output_validates(client, temperature):
    r = ask(client, max_tokens=60, temperature=temperature, seed=1, response_format={
        "type": "json_schema", "json_schema": {"name": "shape", "schema": SCHEMA, "strict": True}})
    c = r.choices[0]
    assert c.finish_reason == "stop", c.message.content
    value = json.loads(c.message.content)
    jsonschema.validate(value, SCHEMA)


def test_json_schema_streaming_validates(client):
    chunks = list(ask(client, max_tokens=60, stream=True, response_format={
        "type": "json_schema", "json_schema": {"name": "shape", "schema": SCHEMA}}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    jsonschema.validate(json.loads(text), SCHEMA)


# ---- errors seen through the client -------------------------------------------------------------------


@pytest.mark.parametrize("kw, field", [
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 10_000_000}, "max_tokens"),
    ({"temperature": -1.0}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"n": 0}, "n"),
    ({"extra_body": {"temperature": "hot"}}, "temperature"),
])
def test_bad_parameters_are_400_naming_the_field(client, kw, field):
    e = api_error(lambda: ask(client, **kw))
    assert e.status_code == 400, e
    assert field in e.message, e.message
    assert_still_serving(client)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_temperature_is_400(client, server, value):
    # JSON has no NaN: the openai client refuses to send one, a careless client writes it anyway.
    body = ('{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": %s}'
            % value).encode()
    req = urllib.request.Request(server.url + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 400
    err = json.load(e.value)["error"]
    assert err["message"], err
    assert_still_serving(client)


def test_bad_role_and_empty_messages_are_400(client):
    e = api_error(lambda: client.chat.completions.create(model="tiny", messages=[]))
    assert e.status_code == 400 and "messages" in e.message
    e = api_error(lambda: client.chat.completions.create(
        model="tiny", messages=[{"role": "wizard", "content": "hi"}]))
    assert e.status_code == 400 and "role" in e.message


@pytest.mark.parametrize("url, what", [
    ("data:image/png;base64,@@@not-base64@@@", "base64"),
    (data_uri(b"this is not an image at all"), "image"),
    (data_uri(png_bytes(8, 8)[:40]), "image"),
])
def test_broken_images_are_400(client, url, what):
    e = api_error(lambda: ask(client, content=with_image(url)))
    assert e.status_code == 400, e
    assert what in e.message.lower(), e.message
    assert_still_serving(client)


def test_remote_and_file_media_refused_by_default(client):
    for url in ("http://127.0.0.1:1/x.png", "file:///etc/passwd"):
        e = api_error(lambda: ask(client, content=with_image(url)))
        assert e.status_code == 400, (url, e)
    assert_still_serving(client)


def test_too_many_images_is_refused(client):
    # The default limit is 8 images per request.
    uri = data_uri(png_bytes(4, 4))
    e = api_error(lambda: ask(client, content=[{"type": "image_url", "image_url": {"url": uri}}] * 9))
    assert e.status_code == 400, e
    assert "image" in e.message.lower(), e.message
    assert_still_serving(client)


@pytest.fixture(scope="module")
def limits_server():
    s = Server("--max-body", "1M", "--max-images", "2")
    yield s
    s.stop()


def test_body_over_the_limit_is_413_and_image_count_checked(limits_server):
    from openai import OpenAI

    c = OpenAI(base_url=limits_server.url + "/v1", api_key="x", max_retries=0, timeout=60)
    e = api_error(lambda: ask(c, content="x" * (2 << 20)))
    assert e.status_code == 413, e
    uri = data_uri(png_bytes(4, 4))
    e = api_error(lambda: ask(c, content=[{"type": "image_url", "image_url": {"url": uri}}] * 3))
    assert e.status_code == 400 and "image" in e.message.lower(), e
    assert ask(c, content=with_image(uri), max_tokens=2).choices[0].message.content is not None
    assert_still_serving(c)


def test_placeholder_tokens_in_text_are_plain_text(client):
    tags = "<|im_start|><|im_end|><|image_pad|><|vision_start|>"
    plain = ask(client, content="a b c d", max_tokens=2)
    r = ask(client, content=tags, max_tokens=2)
    assert r.choices[0].message.content is not None
    # As text the four tags are many tokens each, not four special ones.
    assert r.usage.prompt_tokens >= plain.usage.prompt_tokens + 8


# ---- servers with other options -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_server():
    s = Server("--api-key", "sekret")
    yield s
    s.stop()


def test_wrong_api_key_is_401(keyed_server):
    from openai import OpenAI

    bad = OpenAI(base_url=keyed_server.url + "/v1", api_key="wrong", max_retries=0)
    e = api_error(lambda: ask(bad))
    assert e.status_code == 401
    assert isinstance(e, openai.AuthenticationError)
    good = OpenAI(base_url=keyed_server.url + "/v1", api_key="sekret", max_retries=0)
    assert ask(good, max_tokens=2).choices[0].message.content is not None
    assert good.models.list().data


@pytest.fixture(scope="module")
def one_slot_server():
    s = Server("--parallel", "1", "--queue", "1")
    yield s
    s.stop()


def test_queue_overflow_is_429_with_retry_after(one_slot_server):
    from openai import OpenAI

    c = OpenAI(base_url=one_slot_server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    results = []
    lock = threading.Lock()

    def one():
        try:
            r = ask(c, max_tokens=400, temperature=1.0)
            out = ("ok", r.usage.completion_tokens)
        except openai.APIStatusError as e:
            out = (e.status_code, e.response.headers.get("retry-after"), e.message)
        with lock:
            results.append(out)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = [r[0] for r in results]
    assert set(statuses) <= {"ok", 429}, results
    assert statuses.count("ok") >= 1 and 429 in statuses, results
    for r in results:
        if r[0] == 429:
            assert r[1] is not None and int(r[1]) >= 1, r
    assert_still_serving(c)


def test_disconnect_mid_stream_frees_the_slot(one_slot_server):
    from openai import OpenAI

    c = OpenAI(base_url=one_slot_server.url + "/v1", api_key="x", max_retries=0, timeout=60)
    stream = ask(c, max_tokens=1000, temperature=1.0, stream=True)
    next(iter(stream))
    stream.close()
    # The only slot is free again at once: a new request is answered, not queued behind a dead one.
    t0 = time.monotonic()
    for _ in range(3):
        r = ask(c, max_tokens=2)
        assert r.choices[0].message.content is not None
    assert time.monotonic() - t0 < 30
