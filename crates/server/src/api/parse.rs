//! `parse_chat`: every field of a chat-completions body checked, in the order a client reads the API.

use serde_json::Value;

use super::fields::{type_name, Fields};
use super::response_format::parse_response_format;
use super::{ApiError, ChatRequest, Limits, MAX_TOP_LOGPROBS, MAX_VIDEO_FRAMES};

/// Checks a chat-completions body (already parsed) against `limits`.
pub fn parse_chat(body: &Value, limits: &Limits) -> Result<ChatRequest, ApiError> {
    let obj = body.as_object().ok_or_else(|| {
        ApiError::bad_request(format!(
            "the request body must be a JSON object, not {}",
            type_name(body)
        ))
    })?;
    let f = Fields(obj);
    let model = match f.get("model") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => {
            return Err(ApiError::invalid(
                "model",
                format!("model must be a string, not {}", type_name(v)),
            ))
        }
    };
    let messages = crate::messages::parse_messages(f.get("messages"), limits)?;
    let video_frames = parse_media_io_kwargs(f.get("media_io_kwargs"))?;

    // max_tokens (or its newer name): at least 1, at most the context.
    let mut max_tokens = None;
    for k in ["max_completion_tokens", "max_tokens"] {
        if let Some(v) = f.get(k) {
            match v.as_u64() {
                Some(0) => {
                    return Err(ApiError::invalid(
                        k,
                        format!("{k} must be at least 1, not 0"),
                    ))
                }
                Some(n) if n as u128 > limits.context as u128 => {
                    return Err(ApiError::invalid(
                        k,
                        format!(
                        "{k} = {n} is over the context of {} tokens (prompt and answer together)",
                        limits.context
                    ),
                    ))
                }
                Some(n) => {
                    max_tokens = Some(n as usize);
                    break;
                }
                None => {
                    return Err(ApiError::invalid(
                        k,
                        format!("{k} must be a positive integer, not {v}"),
                    ))
                }
            }
        }
    }

    let temperature = f.f32_in("temperature", 0.0, 2.0, false)?;
    let top_p = f.f32_in("top_p", 0.0, 1.0, true)?;
    let min_p = f.f32_in("min_p", 0.0, 1.0, false)?;
    let presence_penalty = f.f32_in("presence_penalty", -2.0, 2.0, false)?;
    let frequency_penalty = f.f32_in("frequency_penalty", -2.0, 2.0, false)?;
    let repetition_penalty = f.f32_in("repetition_penalty", 0.0, 10.0, true)?;
    // top_k: -1 and 0 both mean off (llama.cpp and vLLM use -1).
    let top_k = match f.get("top_k") {
        Some(v) if v.as_i64() == Some(-1) => Some(0),
        _ => f.uint("top_k", 0, 1 << 20)?.map(|k| k as usize),
    };
    let seed = match f.get("seed") {
        None => None,
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(s), _) => Some(s),
            (None, Some(s)) => Some(s as u64),
            _ => {
                return Err(ApiError::invalid(
                    "seed",
                    format!("seed must be an integer, not {v}"),
                ))
            }
        },
    };

    let stop = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::invalid(
                        format!("stop[{i}]"),
                        format!("stop[{i}] must be a string, not {}", type_name(s)),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "stop must be a string or an array of strings, not {}",
                    type_name(v)
                ),
            ))
        }
    };
    if stop.len() > limits.max_stop {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "stop has {} strings, over the limit of {}",
                stop.len(),
                limits.max_stop
            ),
        ));
    }
    if let Some(i) = stop.iter().position(|s| s.len() > limits.max_stop_bytes) {
        return Err(ApiError::invalid(
            format!("stop[{i}]"),
            format!(
                "stop[{i}] is {} bytes, over the limit of {}",
                stop[i].len(),
                limits.max_stop_bytes
            ),
        ));
    }

    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => Fields(o)
            .bool("include_usage")
            .map_err(|e| ApiError {
                param: Some("stream_options.include_usage".into()),
                message: format!("stream_options.{}", e.message),
                ..e
            })?
            .unwrap_or(false),
        Some(v) => {
            return Err(ApiError::invalid(
                "stream_options",
                format!("stream_options must be an object, not {}", type_name(v)),
            ))
        }
    };

    // logprobs: a boolean (chat API) or a count of alternatives (completions API), <= 20 either way.
    let top = f.uint("top_logprobs", 0, MAX_TOP_LOGPROBS as u64)?;
    let logprobs = match f.get("logprobs") {
        None | Some(Value::Bool(false)) => {
            if top.is_some_and(|t| t > 0) {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "top_logprobs needs logprobs: true",
                ));
            }
            None
        }
        Some(Value::Bool(true)) => Some(top.unwrap_or(0) as usize),
        Some(Value::Number(_)) => f
            .uint("logprobs", 0, MAX_TOP_LOGPROBS as u64)?
            .map(|n| n as usize),
        Some(v) => {
            return Err(ApiError::invalid(
                "logprobs",
                format!("logprobs must be a boolean, not {}", type_name(v)),
            ))
        }
    };

    let n = f.uint("n", 1, limits.max_n as u64).map_err(|e| {
        if f.get("n")
            .and_then(Value::as_u64)
            .is_some_and(|n| n > limits.max_n as u64)
        {
            ApiError::invalid(
                "n",
                format!(
                    "n = {} is over the {} answers this server runs at once (its --parallel)",
                    f.get("n").map(|v| v.to_string()).unwrap_or_default(),
                    limits.max_n
                ),
            )
        } else {
            e
        }
    })?;
    let response_format = parse_response_format(f.get("response_format"))?;
    if let Some(v) = f.get("user") {
        if !v.is_string() {
            return Err(ApiError::invalid(
                "user",
                format!("user must be a string, not {}", type_name(v)),
            ));
        }
    }
    Ok(ChatRequest {
        model,
        messages,
        max_tokens,
        temperature,
        top_p,
        top_k,
        min_p,
        presence_penalty,
        frequency_penalty,
        repetition_penalty,
        seed,
        stop,
        stream,
        include_usage,
        logprobs,
        n: n.unwrap_or(1) as usize,
        response_format,
        video_frames,
    })
}

/// vLLM's per-request media options: `{"video": {"num_frames": N}}` caps the frames sampled from each
/// video (the checkpoint's `video_preprocessor_config.json` sets the rest). Other keys are ignored.
fn parse_media_io_kwargs(v: Option<&Value>) -> Result<Option<usize>, ApiError> {
    const K: &str = "media_io_kwargs";
    let Some(v) = v else {
        return Ok(None);
    };
    let o = v.as_object().ok_or_else(|| {
        ApiError::invalid(K, format!("{K} must be an object, not {}", type_name(v)))
    })?;
    let video = match o.get("video") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(video)) => video,
        Some(v) => {
            return Err(ApiError::invalid(
                format!("{K}.video"),
                format!("{K}.video must be an object, not {}", type_name(v)),
            ))
        }
    };
    Fields(video)
        .uint("num_frames", 1, MAX_VIDEO_FRAMES as u64)
        .map(|n| n.map(|n| n as usize))
        .map_err(|e| ApiError {
            param: Some(format!("{K}.video.num_frames")),
            message: format!("{K}.video.{}", e.message),
            ..e
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::test_util::{err, ok, user};
    use crate::api::{Part, ResponseFormat};
    use serde_json::json;

    #[test]
    fn a_full_request_parses() {
        let r = ok(json!({
            "model": "m", "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "video_url", "video_url": {"url": "file:///v/clip.gif"}}
                ]},
                {"role": "assistant", "content": null}
            ],
            "media_io_kwargs": {"video": {"num_frames": 16, "fps": 2}, "image": {}},
            "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": -1, "min_p": 0.1, "seed": -3,
            "stop": ["\n\n", "END"], "stream": true, "stream_options": {"include_usage": true},
            "logprobs": true, "top_logprobs": 3, "n": 2, "user": "u", "unknown_field": [1, 2],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
        }));
        assert_eq!(r.max_tokens, Some(7));
        assert_eq!(r.temperature, Some(0.5));
        assert_eq!(r.top_k, Some(0));
        assert_eq!(r.seed, Some((-3i64) as u64));
        assert_eq!(r.stop.len(), 2);
        assert!(r.stream && r.include_usage);
        assert_eq!(r.logprobs, Some(3));
        assert_eq!(r.n, 2);
        assert_eq!(r.image_count(), 1);
        assert_eq!(r.video_count(), 1);
        assert_eq!(r.video_frames, Some(16));
        assert_eq!(
            r.messages[1].parts[2],
            Part::Video {
                url: "file:///v/clip.gif".into(),
                param: "messages[1].content[2].video_url".into()
            }
        );
        assert_eq!(r.messages[2].parts, vec![]);
        assert_eq!(
            r.response_format,
            ResponseFormat::JsonSchema(json!({"type": "object"}))
        );
        assert_eq!(
            r.messages[1].parts[1],
            Part::Image {
                url: "data:image/png;base64,AAAA".into(),
                param: "messages[1].content[1].image_url".into()
            }
        );
        let r = ok(json!({"messages": user("hi"), "max_completion_tokens": 3, "stop": "x"}));
        assert_eq!(
            (r.max_tokens, r.stop, r.n, r.logprobs, r.video_frames),
            (Some(3), vec!["x".to_string()], 1, None, None)
        );
    }

    /// Each bad field: a 400 naming it.
    #[test]
    fn bad_fields_are_named() {
        let cases: Vec<(Value, &str, &str)> = vec![
            (
                json!({"messages": user("a"), "max_tokens": 0}),
                "max_tokens",
                "at least 1",
            ),
            (
                json!({"messages": user("a"), "max_tokens": 5000}),
                "max_tokens",
                "over the context",
            ),
            (
                json!({"messages": user("a"), "max_tokens": "5"}),
                "max_tokens",
                "positive integer",
            ),
            (
                json!({"messages": user("a"), "max_completion_tokens": -1}),
                "max_completion_tokens",
                "positive integer",
            ),
            (
                json!({"messages": user("a"), "temperature": "hot"}),
                "temperature",
                "must be a number",
            ),
            (
                json!({"messages": user("a"), "temperature": 2.5}),
                "temperature",
                "out of range",
            ),
            (
                json!({"messages": user("a"), "temperature": -0.1}),
                "temperature",
                "out of range",
            ),
            (
                json!({"messages": user("a"), "top_p": 0}),
                "top_p",
                "out of range",
            ),
            (
                json!({"messages": user("a"), "top_p": 1.01}),
                "top_p",
                "out of range",
            ),
            (
                json!({"messages": user("a"), "min_p": 2}),
                "min_p",
                "out of range",
            ),
            (
                json!({"messages": user("a"), "presence_penalty": 3}),
                "presence_penalty",
                "out of range",
            ),
            (
                json!({"messages": user("a"), "repetition_penalty": 0}),
                "repetition_penalty",
                "out of range",
            ),
            (
                json!({"messages": user("a"), "top_k": 1.5}),
                "top_k",
                "integer",
            ),
            (
                json!({"messages": user("a"), "logprobs": true, "top_logprobs": 21}),
                "top_logprobs",
                "0 to 20",
            ),
            (
                json!({"messages": user("a"), "logprobs": 21}),
                "logprobs",
                "0 to 20",
            ),
            (
                json!({"messages": user("a"), "logprobs": "yes"}),
                "logprobs",
                "boolean",
            ),
            (
                json!({"messages": user("a"), "top_logprobs": 2}),
                "top_logprobs",
                "logprobs: true",
            ),
            (
                json!({"messages": user("a"), "n": 0}),
                "n",
                "integer from 1",
            ),
            (json!({"messages": user("a"), "n": 9}), "n", "--parallel"),
            (
                json!({"messages": user("a"), "stream": "yes"}),
                "stream",
                "boolean",
            ),
            (
                json!({"messages": user("a"), "stream_options": {"include_usage": 1}}),
                "stream_options.include_usage",
                "boolean",
            ),
            (
                json!({"messages": user("a"), "stop": 5}),
                "stop",
                "string or an array",
            ),
            (
                json!({"messages": user("a"), "stop": ["a", 1]}),
                "stop[1]",
                "must be a string",
            ),
            (
                json!({"messages": user("a"), "seed": "x"}),
                "seed",
                "integer",
            ),
            (
                json!({"messages": user("a"), "model": 3}),
                "model",
                "string",
            ),
            (json!({"messages": user("a"), "user": 3}), "user", "string"),
            (
                json!({"messages": user("a"), "response_format": {"type": "xml"}}),
                "response_format.type",
                "not one of",
            ),
            (
                json!({"messages": user("a"), "response_format": {"type": "json_schema"}}),
                "response_format.json_schema",
                "schema",
            ),
            (json!({}), "messages", "required"),
            (json!({"messages": []}), "messages", "empty"),
            (json!({"messages": "hi"}), "messages", "array"),
            (json!({"messages": [3]}), "messages[0]", "object"),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                "messages[0].role",
                "not supported",
            ),
            (
                json!({"messages": [{"content": "x"}]}),
                "messages[0].role",
                "must be a string",
            ),
            (
                json!({"messages": [{"role": "user"}]}),
                "messages[0].content",
                "required",
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                "messages[0].content",
                "string or an array",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}),
                "messages[0].content[0].type",
                "not supported",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}),
                "messages[0].content[0].text",
                "string",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                "messages[0].content[0].image_url",
                "url",
            ),
            (
                json!({"messages": [{"role": "assistant", "content": [{"type": "image_url", "image_url": "data:,"}]}]}),
                "messages[0].content[0]",
                "user messages",
            ),
            (
                json!({"messages": [{"role": "system", "content": [{"type": "video_url", "video_url": {"url": "data:,"}}]}]}),
                "messages[0].content[0]",
                "videos are only supported in user messages",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "video_url"}]}]}),
                "messages[0].content[1].video_url",
                "must be an object with a url",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": 7}}]}]}),
                "messages[0].content[0].video_url.url",
                "must be a string",
            ),
            (
                json!({"messages": user("a"), "media_io_kwargs": {"video": {"num_frames": 0}}}),
                "media_io_kwargs.video.num_frames",
                "integer from 1 to 768",
            ),
            (
                json!({"messages": user("a"), "media_io_kwargs": {"video": {"num_frames": "8"}}}),
                "media_io_kwargs.video.num_frames",
                "must be an integer",
            ),
            (
                json!({"messages": user("a"), "media_io_kwargs": {"video": 8}}),
                "media_io_kwargs.video",
                "must be an object",
            ),
            (
                json!({"messages": user("a"), "media_io_kwargs": []}),
                "media_io_kwargs",
                "must be an object",
            ),
        ];
        for (body, param, needle) in cases {
            let e = err(body.clone());
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
            assert!(
                e.message.contains(needle),
                "{body}: {:?} lacks {needle:?}",
                e.message
            );
            assert_eq!(e.body()["error"]["param"], json!(param));
            assert_eq!(e.body()["error"]["type"], json!("invalid_request_error"));
        }
    }

    #[test]
    fn too_many_images_are_refused_before_decoding() {
        let img = json!({"type": "image_url", "image_url": {"url": "not even a url"}});
        let parts: Vec<Value> = (0..9).map(|_| img.clone()).collect();
        let e = err(json!({"messages": [{"role": "user", "content": parts}]}));
        assert_eq!(e.param.as_deref(), Some("messages"));
        assert!(e.message.contains("more than 8 images"), "{}", e.message);
        let parts: Vec<Value> = (0..8).map(|_| img.clone()).collect();
        assert_eq!(
            ok(json!({"messages": [{"role": "user", "content": parts}]})).image_count(),
            8
        );
        // Videos count with the images.
        let vid = json!({"type": "video_url", "video_url": {"url": "not even a url"}});
        let mut parts: Vec<Value> = (0..7).map(|_| img.clone()).collect();
        parts.push(vid.clone());
        let r = ok(json!({"messages": [{"role": "user", "content": parts.clone()}]}));
        assert_eq!((r.image_count(), r.video_count()), (7, 1));
        parts.push(vid);
        let e = err(json!({"messages": [{"role": "user", "content": parts}]}));
        assert!(
            e.message.contains("more than 8 images and videos"),
            "{}",
            e.message
        );
    }

    #[test]
    fn stop_limits() {
        let many: Vec<String> = (0..17).map(|i| i.to_string()).collect();
        assert_eq!(
            err(json!({"messages": user("a"), "stop": many}))
                .param
                .as_deref(),
            Some("stop")
        );
        let long = "x".repeat(257);
        assert_eq!(
            err(json!({"messages": user("a"), "stop": [long]}))
                .param
                .as_deref(),
            Some("stop[0]")
        );
    }
}
