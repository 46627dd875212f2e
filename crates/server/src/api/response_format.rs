//! `response_format`: plain text, any JSON object, or JSON valid against a schema (its depth checked
//! before anything compiles it).

use serde_json::Value;

use super::fields::type_name;
use super::{ApiError, ResponseFormat};

/// The `response_format` field (None: absent, plain text); a bad one is a 400 naming the field at fault.
pub(super) fn parse_response_format(v: Option<&Value>) -> Result<ResponseFormat, ApiError> {
    let Some(v) = v else {
        return Ok(ResponseFormat::Text);
    };
    let o = v.as_object().ok_or_else(|| {
        ApiError::invalid(
            "response_format",
            format!("response_format must be an object, not {}", type_name(v)),
        )
    })?;
    match o.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let js = o
                .get("json_schema")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "response_format.json_schema",
                        "response_format.json_schema must be an object with a `schema`",
                    )
                })?;
            match js.get("schema") {
                Some(s @ Value::Object(_)) => {
                    // Before anything is compiled: a schema nested too deeply (counting its `$ref`s),
                    // or an integer bound beyond ±2^53, would overflow the compiler's stack.
                    qwen3vl_engine::constraint::check_schema(s).map_err(|e| {
                        ApiError::invalid(
                            "response_format.json_schema.schema",
                            format!("response_format.json_schema.schema: {e}"),
                        )
                    })?;
                    Ok(ResponseFormat::JsonSchema(s.clone()))
                }
                Some(Value::Bool(true)) | None => Ok(ResponseFormat::JsonObject),
                Some(s) => Err(ApiError::invalid(
                    "response_format.json_schema.schema",
                    format!(
                        "response_format.json_schema.schema must be an object, not {}",
                        type_name(s)
                    ),
                )),
            }
        }
        Some(t) => Err(ApiError::invalid(
            "response_format.type",
            format!("response_format.type {t:?} is not one of text, json_object, json_schema"),
        )),
        None => Err(ApiError::invalid(
            "response_format.type",
            "response_format.type must be one of text, json_object, json_schema",
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::api::test_util::{err, ok, user};
    use crate::api::{parse_chat, parse_json, Limits, ResponseFormat};
    use serde_json::{json, Value};

    use qwen3vl_engine::dev::schemas::ref_chain;

    #[test]
    fn schemas_nested_too_deeply_are_refused_naming_the_limit() {
        let with = |schema: Value| {
            json!({"messages": user("a"), "response_format": {"type": "json_schema",
                   "json_schema": {"name": "x", "schema": schema}}})
        };
        assert_eq!(
            ok(with(ref_chain(248))).response_format,
            ResponseFormat::JsonSchema(ref_chain(248))
        );
        let e = err(with(ref_chain(249)));
        assert_eq!(e.status, 400);
        assert_eq!(
            e.param.as_deref(),
            Some("response_format.json_schema.schema")
        );
        assert!(
            e.message.starts_with(
                "response_format.json_schema.schema: the JSON schema nests 1003 levels deep, \
                 over the limit of 1000"
            ),
            "{}",
            e.message
        );
    }

    /// serde_json refuses 128 nested arrays/objects; just under that a schema parses, passes the depth
    /// check (124 < 1000) and is dropped, all on a 2 MiB thread (a tokio blocking thread's).
    #[test]
    fn a_body_nested_just_under_serde_jsons_limit_parses_on_a_2_mib_thread() {
        let nested = |levels: usize| {
            let schema = format!(
                "{}{{\"type\":\"string\"}}{}",
                "{\"type\":\"array\",\"items\":".repeat(levels - 1),
                "}".repeat(levels - 1)
            );
            format!(
                "{{\"messages\":[{{\"role\":\"user\",\"content\":\"a\"}}],\
                 \"response_format\":{{\"type\":\"json_schema\",\"json_schema\":{{\"schema\":{schema}}}}}}}"
            )
        };
        let (ok_body, deep_body) = (nested(124), nested(125));
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                // 3 levels of body around 124 of schema: 127, the most serde_json takes.
                let v = parse_json(ok_body.as_bytes()).expect("127 levels parse");
                let r = parse_chat(&v, &Limits::default()).expect("accepted");
                let ResponseFormat::JsonSchema(s) = &r.response_format else {
                    panic!("{:?}", r.response_format)
                };
                assert_eq!(qwen3vl_engine::constraint::schema_depth(s), 124);
                let e = parse_json(deep_body.as_bytes()).expect_err("128 levels do not");
                assert!(
                    e.message.contains("recursion limit exceeded"),
                    "{}",
                    e.message
                );
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
