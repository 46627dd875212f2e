//! `video_url` content parts on the tiny checkpoint, over real sockets: a clip as a data: URI is answered
//! with transformers' prompt length, its tokens are reused from the prefix cache by content (not by
//! placeholder id), and each malformed video part is a 400 naming the part, the server serving on.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

/// `<|video_pad|>` of the tiny checkpoint (config.json `video_token_id`).
const VIDEO_PAD: u64 = 151656;
/// `<|vision_start|>`: the chat template's one around a video, and one per frame group inside it.
const VISION_START: u64 = 151652;

fn clip(name: &str) -> Vec<u8> {
    std::fs::read(testdata().join("video/clips").join(name)).unwrap()
}

fn data_uri(bytes: &[u8], mime: &str) -> String {
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A user message: `before` text (if any), the video, then `after`.
fn video_msg(before: Option<&str>, url: &str, after: &str) -> Value {
    let mut parts = Vec::new();
    if let Some(t) = before {
        parts.push(json!({"type": "text", "text": t}));
    }
    parts.push(json!({"type": "video_url", "video_url": {"url": url}}));
    parts.push(json!({"type": "text", "text": after}));
    json!([{"role": "user", "content": parts}])
}

fn tokenize(addr: std::net::SocketAddr, body: &Value) -> Vec<u64> {
    let r = http(addr, "POST", "/tokenize", &[], body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["count"], json!(v["tokens"].as_array().unwrap().len()));
    v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

/// transformers' token count of a prompt of testdata/video/cases.json.
fn reference_len(name: &str) -> u64 {
    let cases: Value =
        serde_json::from_slice(&std::fs::read(testdata().join("video/cases.json")).unwrap())
            .unwrap();
    let p = cases["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap();
    p["len"].as_u64().unwrap()
}

#[test]
fn a_gif_video_is_answered_with_the_reference_prompt_and_reused_by_content() {
    let addr = shared();
    let gif = data_uri(&clip("gif_33x47_10f.gif"), "image/gif");
    let body = json!({
        "messages": video_msg(None, &gif, "What happens in this video?"),
        "max_tokens": 3, "temperature": 0,
    });
    let r = chat(addr, &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    // The clip samples 4 frames: 2 groups of 2x2 merged patches = 2 video tokens, each group after its
    // timestamp; transformers' prompt for this clip and question has 34 tokens.
    assert_eq!(
        v["usage"]["prompt_tokens"],
        json!(reference_len("video_only"))
    );
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    assert!(v["choices"][0]["message"]["content"].is_string());
    let toks = tokenize(addr, &body);
    assert_eq!(toks.len() as u64, reference_len("video_only"));
    assert_eq!(toks.iter().filter(|&&t| t == VIDEO_PAD).count(), 2);
    // The same request again: all but the last prompt token come from the prefix cache, the video's
    // tokens included.
    let again = chat(addr, &body).json();
    assert_eq!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"],
        json!(reference_len("video_only") - 1)
    );

    // Two clips with the same timestamps ("<0.2 seconds>", "<1.0 seconds>") and different frames: the
    // second reuses the first's prefix up to its first video token, not beyond (keys by content, where
    // keys by token id would match two more pad tokens).
    let ask = |name: &str, mime: &str| {
        json!({
            "messages": video_msg(Some("Look:"), &data_uri(&clip(name), mime), "Same?"),
            "max_tokens": 1, "temperature": 0,
        })
    };
    let first = chat(addr, &ask("gif_short_3f.gif", "image/gif"));
    assert_eq!(first.status, 200, "{}", first.body);
    let second = ask("webp_6f.webp", "image/webp");
    let r = chat(addr, &second);
    assert_eq!(r.status, 200, "{}", r.body);
    let toks = tokenize(addr, &second);
    let first_pad = toks.iter().position(|&t| t == VIDEO_PAD).unwrap();
    assert_eq!(
        r.json()["usage"]["prompt_tokens_details"]["cached_tokens"],
        json!(first_pad),
        "{}",
        r.body
    );
}

#[test]
fn num_frames_caps_the_sampled_frames() {
    let addr = shared();
    let gif = data_uri(&clip("gif_33x47_10f.gif"), "image/gif");
    let count = |toks: &[u64], id: u64| toks.iter().filter(|&&t| t == id).count();
    let mut body = json!({
        "messages": video_msg(None, &gif, "What happens in this video?"),
        "max_tokens": 1,
    });
    // By default 4 frames: two groups of two.
    assert_eq!(count(&tokenize(addr, &body), VISION_START), 1 + 2);
    // At most 2 frames: one group (its frames larger, within the same pixel budget).
    body["media_io_kwargs"] = json!({"video": {"num_frames": 2}});
    let toks = tokenize(addr, &body);
    assert_eq!(count(&toks, VISION_START), 1 + 1);
    assert!(count(&toks, VIDEO_PAD) >= 1);
    let r = chat(addr, &body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["usage"]["prompt_tokens"], json!(toks.len()));
}

#[test]
fn malformed_video_parts_get_400s_naming_the_part() {
    let addr = shared();
    let gif = clip("gif_33x47_10f.gif");
    let text_then_video = |url: &str| video_msg(Some("Look:"), url, "What is it?");
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"messages": text_then_video("data:image/gif;base64,!!!notbase64")}),
            "messages[0].content[1].video_url",
            "not valid base64",
        ),
        (
            json!({"messages": text_then_video(&data_uri(b"hello world, not a video", "video/mp4"))}),
            "messages[0].content[1].video_url",
            "the video could not be decoded",
        ),
        (
            json!({"messages": text_then_video(&data_uri(&gif[..gif.len() * 3 / 5], "image/gif"))}),
            "messages[0].content[1].video_url",
            "the video could not be decoded",
        ),
        (
            json!({"messages": text_then_video(&data_uri(b"", "image/gif"))}),
            "messages[0].content[1].video_url",
            "the video could not be decoded",
        ),
        (
            json!({"messages": text_then_video("http://127.0.0.1/clip.mp4")}),
            "messages[0].content[1].video_url",
            "http(s) video URLs are disabled",
        ),
        (
            json!({"messages": text_then_video("file:///etc/passwd")}),
            "messages[0].content[1].video_url",
            "--allowed-media-dir",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {}}]}]}),
            "messages[0].content[0].video_url.url",
            "must be a string",
        ),
        (
            json!({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": png_data_uri()}},
                {"type": "video_url", "video_url": {"url": data_uri(&gif, "image/gif")}},
                {"type": "image_url", "image_url": {"url": png_data_uri()}}]}]}),
            "messages",
            "more than 2 images and videos",
        ),
        (
            json!({"messages": text_then_video(&data_uri(&gif, "image/gif")),
                   "media_io_kwargs": {"video": {"num_frames": 0}}}),
            "media_io_kwargs.video.num_frames",
            "integer from 1",
        ),
        // 34 prompt tokens with the video: 991 more do not fit the context of 1024 (the question alone
        // would leave room for them).
        (
            json!({"messages": video_msg(None, &data_uri(&gif, "image/gif"), "What happens in this video?"),
                   "max_tokens": 991}),
            "max_tokens",
            "over the context",
        ),
    ];
    for (body, param, needle) in cases {
        let r = chat(addr, &body);
        assert_error(&r, 400, Some(param), needle);
        still_serves(addr);
    }
    // The question alone leaves room for those 991 tokens: the refusal above was the video's tokens.
    let toks = tokenize(
        addr,
        &json!({"messages": user("What happens in this video?")}),
    );
    assert!(toks.len() + 991 <= 1024, "{}", toks.len());
}

/// With the `ffmpeg` feature, a container file (MP4, H.264) as a data: URI is decoded through FFmpeg and
/// answered; its sampled frames and grid are transformers' (testdata/video/ffmpeg_cases.json, PyAV
/// decoding as torchcodec does).
#[cfg(feature = "ffmpeg")]
#[test]
fn an_mp4_video_is_decoded_through_ffmpeg() {
    let addr = shared();
    let name = "mp4_h264_98x54_40f.mp4";
    let cases: Value =
        serde_json::from_slice(&std::fs::read(testdata().join("video/ffmpeg_cases.json")).unwrap())
            .unwrap();
    let case = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == name)
        .unwrap();
    let grid: Vec<u64> = case["grid_thw"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let mp4 = data_uri(&clip(&format!("ffmpeg/{name}")), "video/mp4");
    let body = json!({
        "messages": video_msg(None, &mp4, "What happens in this video?"),
        "max_tokens": 2, "temperature": 0,
    });
    let toks = tokenize(addr, &body);
    let count = |id: u64| toks.iter().filter(|&&t| t == id).count() as u64;
    // one <|vision_start|> around the video and one per frame group; grid t·h·w / 4 merged tokens
    assert_eq!(count(VISION_START), 1 + grid[0]);
    assert_eq!(count(VIDEO_PAD), grid[0] * grid[1] * grid[2] / 4);
    let r = chat(addr, &body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["usage"]["prompt_tokens"], json!(toks.len()));
}
