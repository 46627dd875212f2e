//! The `messages` of a chat request: roles, and content as a string or parts (`text`, `image_url`,
//! `video_url`), checked before any media is fetched. Images and videos together count against
//! [`Limits::max_images`].

use serde_json::{Map, Value};

use crate::api::{type_name, ApiError, ChatMessage, Limits, Part};

pub(crate) fn parse_messages(
    v: Option<&Value>,
    limits: &Limits,
) -> Result<Vec<ChatMessage>, ApiError> {
    let arr = match v {
        None => return Err(ApiError::invalid("messages", "messages is required")),
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::invalid("messages", "messages must not be empty"))
        }
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(ApiError::invalid(
                "messages",
                format!("messages must be an array, not {}", type_name(v)),
            ))
        }
    };
    let mut out = Vec::with_capacity(arr.len());
    let mut media = 0usize;
    for (i, m) in arr.iter().enumerate() {
        let at = format!("messages[{i}]");
        let o = m.as_object().ok_or_else(|| {
            ApiError::invalid(&at, format!("{at} must be an object, not {}", type_name(m)))
        })?;
        let role = parse_role(o, &at)?;
        let parts = match o.get("content") {
            None | Some(Value::Null) if role == "assistant" => Vec::new(),
            Some(Value::String(s)) => vec![Part::Text(s.clone())],
            Some(Value::Array(items)) => {
                let mut parts = Vec::with_capacity(items.len());
                for (j, p) in items.iter().enumerate() {
                    let part = parse_part(p, &format!("{at}.content[{j}]"), &role)?;
                    if matches!(part, Part::Image { .. } | Part::Video { .. }) {
                        media += 1;
                        if media > limits.max_images {
                            return Err(ApiError::invalid(
                                "messages",
                                format!(
                                    "the request has more than {} images and videos, the limit of this server",
                                    limits.max_images
                                ),
                            ));
                        }
                    }
                    parts.push(part);
                }
                parts
            }
            Some(v) => {
                return Err(ApiError::invalid(
                    format!("{at}.content"),
                    format!(
                        "{at}.content must be a string or an array of parts, not {}",
                        type_name(v)
                    ),
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    format!("{at}.content"),
                    format!("{at}.content is required"),
                ))
            }
        };
        out.push(ChatMessage { role, parts });
    }
    Ok(out)
}

fn parse_role(o: &Map<String, Value>, at: &str) -> Result<String, ApiError> {
    match o.get("role") {
        Some(Value::String(r))
            if ["system", "user", "assistant", "developer"].contains(&r.as_str()) =>
        {
            // OpenAI's newer name for the system role.
            Ok(if r == "developer" {
                "system".to_string()
            } else {
                r.clone()
            })
        }
        Some(Value::String(r)) => Err(ApiError::invalid(
            format!("{at}.role"),
            format!("{at}.role {r:?} is not supported (system, user or assistant)"),
        )),
        _ => Err(ApiError::invalid(
            format!("{at}.role"),
            format!("{at}.role must be a string: system, user or assistant"),
        )),
    }
}

/// One content part at `pat` (`messages[i].content[j]`) of a message of `role`.
fn parse_part(p: &Value, pat: &str, role: &str) -> Result<Part, ApiError> {
    let po = p.as_object().ok_or_else(|| {
        ApiError::invalid(
            pat,
            format!("{pat} must be an object, not {}", type_name(p)),
        )
    })?;
    let kind = match po.get("type").and_then(Value::as_str) {
        Some("text") => {
            return match po.get("text") {
                Some(Value::String(t)) => Ok(Part::Text(t.clone())),
                _ => Err(ApiError::invalid(
                    format!("{pat}.text"),
                    format!("{pat}.text must be a string"),
                )),
            }
        }
        Some(k @ ("image_url" | "video_url")) => k,
        Some(t) => {
            return Err(ApiError::invalid(
                format!("{pat}.type"),
                format!("{pat}.type {t:?} is not supported (text, image_url or video_url)"),
            ))
        }
        None => {
            return Err(ApiError::invalid(
                format!("{pat}.type"),
                format!("{pat}.type must be a string: text, image_url or video_url"),
            ))
        }
    };
    let what = if kind == "image_url" {
        "images"
    } else {
        "videos"
    };
    if role != "user" {
        return Err(ApiError::invalid(
            pat,
            format!("{pat}: {what} are only supported in user messages"),
        ));
    }
    // `{"url": ...}` as OpenAI and vLLM send it; a bare string as some clients do.
    let url = match po.get(kind) {
        Some(Value::String(u)) => u.clone(),
        Some(Value::Object(io)) => match io.get("url") {
            Some(Value::String(u)) => u.clone(),
            _ => {
                return Err(ApiError::invalid(
                    format!("{pat}.{kind}.url"),
                    format!("{pat}.{kind}.url must be a string"),
                ))
            }
        },
        _ => {
            return Err(ApiError::invalid(
                format!("{pat}.{kind}"),
                format!("{pat}.{kind} must be an object with a url"),
            ))
        }
    };
    let param = format!("{pat}.{kind}");
    Ok(if kind == "image_url" {
        Part::Image { url, param }
    } else {
        Part::Video { url, param }
    })
}
