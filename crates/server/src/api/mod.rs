//! Request validation: the JSON of `POST /v1/chat/completions` turned into a checked [`ChatRequest`], or
//! an OpenAI-style error naming the field (RELIABILITY 7, 10). Everything a client controls is checked
//! here, before any image is decoded or any text tokenized; unknown fields are ignored.
//!
//! `request.rs` holds the checked request and the limits it is checked against, `parse.rs` the checks of
//! `parse_chat`, `response_format.rs` those of `response_format`, `fields.rs` the JSON field accessors
//! that name a bad field, `error.rs` the error.

mod error;
mod fields;
mod parse;
mod request;
mod response_format;

pub use error::ApiError;
pub use fields::parse_json;
pub(crate) use fields::type_name;
pub use parse::parse_chat;
pub use request::{
    ChatMessage, ChatRequest, Limits, Part, ResponseFormat, MAX_TOP_LOGPROBS, MAX_VIDEO_FRAMES,
};

/// What the tests of the checks share: a request parsed under the default limits, or its error.
#[cfg(test)]
mod test_util {
    use super::{parse_chat, ApiError, ChatRequest, Limits};
    use serde_json::{json, Value};

    pub(super) fn ok(body: Value) -> ChatRequest {
        parse_chat(&body, &Limits::default()).unwrap()
    }

    pub(super) fn err(body: Value) -> ApiError {
        parse_chat(&body, &Limits::default()).unwrap_err()
    }

    pub(super) fn user(text: &str) -> Value {
        json!([{"role": "user", "content": text}])
    }
}
