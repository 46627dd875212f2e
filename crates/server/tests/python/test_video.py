"""Video through the official `openai` client: a `video_url` content part (vLLM's spelling) holding an
animated GIF as a data: URL is answered, its prompt has transformers' token count, streaming gives the same
greedy text, and a video that cannot be decoded is a 400 naming the content part."""

import json

import openai
import pytest

from conftest import REPO, data_uri

CLIPS = REPO / "testdata" / "video" / "clips"
QUESTION = "What happens in this video?"


def reference_len(name):
    """transformers' token count of a prompt of testdata/video/cases.json."""
    cases = json.loads((REPO / "testdata" / "video" / "cases.json").read_text())
    return next(p["len"] for p in cases["prompts"] if p["name"] == name)


def video_then_text(uri, text=QUESTION):
    return [{"type": "video_url", "video_url": {"url": uri}}, {"type": "text", "text": text}]


def ask(client, content, **kw):
    kw.setdefault("max_tokens", 6)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": content}], **kw)


def test_animated_gif_as_data_url_is_answered(client):
    uri = data_uri((CLIPS / "gif_33x47_10f.gif").read_bytes(), "image/gif")
    r = ask(client, video_then_text(uri))
    c = r.choices[0]
    assert isinstance(c.message.content, str)
    assert c.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens >= 1
    # 10 frames at 5 fps sample 4 frames: 2 timestamped groups of one token each; with the template and
    # the question, transformers' prompt has 34 tokens.
    assert reference_len("video_only") == 34
    assert r.usage.prompt_tokens == 34
    assert r.usage.total_tokens == 34 + r.usage.completion_tokens

    chunks = list(ask(client, video_then_text(uri), stream=True,
                      stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == c.message.content
    assert chunks[-1].usage.prompt_tokens == 34
    # The resent video is reused from the prefix cache, all but the last prompt token.
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 33


@pytest.mark.parametrize("data, mime", [
    (b"this is not a video at all", "video/mp4"),
    ((CLIPS / "gif_33x47_10f.gif").read_bytes()[:300], "image/gif"),
], ids=["garbage", "truncated-gif"])
def test_undecodable_video_is_400_naming_the_part(client, data, mime):
    content = [{"type": "text", "text": "Look:"}] + video_then_text(data_uri(data, mime))
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, content)
    assert e.value.status_code == 400
    assert e.value.param == "messages[0].content[1].video_url", e.value.body
    assert "the video could not be decoded" in e.value.message, e.value.message
    # Still serving.
    assert ask(client, "hi", max_tokens=2).usage.completion_tokens >= 1
