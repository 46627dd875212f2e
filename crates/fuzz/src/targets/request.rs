//! `request`: the body of `POST /v1/chat/completions` as the server takes it — `api::parse_json` and
//! `api::parse_chat` (the server's public validation) under the default limits — then what its handler
//! does with an accepted request before queueing it (crates/server/src/chat.rs): the response format
//! compiled to a constraint over the tokenizer's vocabulary (and, as the scheduler does, started and
//! asked for the first token's mask), each image fetched under the default media
//! policy (data: URIs only) then decoded and preprocessed, and the messages encoded with the chat template.

use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use qwen3vl_engine::{JsonGrammar, TokenBytes};
use qwen3vl_processor::{Content, Message, VideoOptions};
use qwen3vl_server::api::{self, Limits, Part, ResponseFormat};
use qwen3vl_server::media::{self, MediaPolicy};

use super::processor;

/// The structured-output grammar as the server builds it, over a small vocabulary (every byte, a few
/// words and `<|im_end|>`) so that it is built in milliseconds: compiling a schema does not depend on it.
/// With it, the vocabulary's size.
fn grammar() -> &'static (Arc<JsonGrammar>, usize) {
    static G: OnceLock<(Arc<JsonGrammar>, usize)> = OnceLock::new();
    G.get_or_init(|| {
        let bytes: Vec<[u8; 1]> = (0..=255u8).map(|b| [b]).collect();
        let mut tokens: Vec<&[u8]> = bytes.iter().map(|b| &b[..]).collect();
        tokens.extend([
            &b"{\""[..],
            b"\": ",
            b"\", \"",
            b"true",
            b"null",
            b"<|im_end|>",
        ]);
        let mut special = vec![false; tokens.len()];
        special[tokens.len() - 1] = true;
        let table = TokenBytes::from_parts(&tokens, &special);
        let eos = tokens.len() as u32 - 1;
        let g = JsonGrammar::new(&table, table.len(), eos).expect("the grammar builds");
        (Arc::new(g), table.len())
    })
}

/// Seeds: requests like the server's tests and the openai client send (text, an image as a data: URI,
/// sampling and streaming fields, a JSON schema, a JSON object).
pub fn seeds() -> Vec<Vec<u8>> {
    let png = base64::engine::general_purpose::STANDARD.encode(include_bytes!(
        "../../../../testdata/processor/images/rgb_20x30.png"
    ));
    let image = serde_json::json!({
        "model": "qwen3vl",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{png}")}},
                {"type": "text", "text": "What is in this image?"}
            ]}
        ],
        "max_tokens": 32, "temperature": 0, "stream": true, "stream_options": {"include_usage": true},
        "logprobs": true, "top_logprobs": 2, "n": 2
    });
    let schema = serde_json::json!({
        "messages": [{"role": "developer", "content": "Answer in JSON."},
                     {"role": "user", "content": "Name and age of a cat?"},
                     {"role": "assistant", "content": "{\"name\": \"Tom\", \"age\": 3}"},
                     {"role": "user", "content": [{"type": "text", "text": "Another one."}]}],
        "max_completion_tokens": 64, "seed": 7, "stop": ["\n\n", "END"],
        "response_format": {"type": "json_schema", "json_schema": {"name": "cat", "strict": true, "schema": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 20},
                           "age": {"type": "integer", "minimum": 0, "maximum": 30},
                           "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}},
            "required": ["name", "age"], "additionalProperties": false}}}
    });
    let object = serde_json::json!({
        "messages": [{"role": "user", "content": "A JSON object with one key."}],
        "response_format": {"type": "json_object"}, "top_k": 20, "top_p": 0.8, "min_p": 0.05,
        "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.1, "stop": "x",
        "user": "u1"
    });
    [image, schema, object]
        .iter()
        .map(|v| serde_json::to_vec(v).expect("json"))
        .collect()
}

pub fn run(b: &[u8]) -> bool {
    let Ok(v) = api::parse_json(b) else {
        return false;
    };
    let Ok(req) = api::parse_chat(&v, &Limits::default()) else {
        return false;
    };
    let schema = match &req.response_format {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => Some(None),
        ResponseFormat::JsonSchema(s) => Some(Some(s.clone())),
    };
    if let Some(schema) = schema {
        // As the scheduler does with it: each sequence starts a constraint and masks its first token.
        let (g, vocab) = grammar();
        let Ok(f) = g.for_schema(schema) else {
            return false;
        };
        let Ok(mut c) = f.start() else {
            return false;
        };
        let mut logits = vec![0.0f32; *vocab];
        if c.mask(&mut logits).is_err() {
            return false;
        }
    }
    let p = processor();
    let policy = MediaPolicy::default();
    let mut images = Vec::new();
    let mut videos = Vec::new();
    let mut messages = Vec::new();
    for m in &req.messages {
        let mut content = Vec::new();
        for part in &m.parts {
            match part {
                Part::Text(t) => content.push(Content::Text(t.clone())),
                Part::Image { url, param } => {
                    let Ok(bytes) = media::fetch(url, param, &policy) else {
                        return false;
                    };
                    let Ok(img) = p.load_image_bytes(&bytes) else {
                        return false;
                    };
                    let Ok(input) = p.preprocess_image(&img) else {
                        return false;
                    };
                    images.push(input);
                    content.push(Content::Image);
                }
                Part::Video { url, param } => {
                    let Ok(bytes) = media::fetch(url, param, &policy) else {
                        return false;
                    };
                    let Ok(v) = p.load_video_bytes(&bytes, &VideoOptions::default()) else {
                        return false;
                    };
                    videos.push(v);
                    content.push(Content::Video);
                }
            }
        }
        messages.push(Message::new(&m.role, content));
    }
    p.encode_media(&messages, &images, &videos, true).is_ok()
}
