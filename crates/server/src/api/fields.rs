//! Reading the JSON of a request: the body, and the fields of an object, each error naming the field and
//! what it should be.

use serde_json::{Map, Value};

use super::ApiError;

/// Parses a JSON body; a body that is not JSON is a 400 saying so (NaN and Infinity are not JSON).
pub fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice::<Value>(body).map_err(|e| {
        let hint =
            if body.windows(3).any(|w| w == b"NaN") || body.windows(8).any(|w| w == b"Infinity") {
                " (NaN and Infinity are not JSON numbers: send a finite number)"
            } else {
                ""
            };
        ApiError::bad_request(format!("the request body is not valid JSON{hint}: {e}"))
    })
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Field accessors that name the field and what it should be.
pub(crate) struct Fields<'a>(pub(crate) &'a Map<String, Value>);

impl Fields<'_> {
    /// The field, None when absent or null.
    pub(super) fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }

    pub(super) fn f32_in(
        &self,
        k: &str,
        lo: f32,
        hi: f32,
        lo_open: bool,
    ) -> Result<Option<f32>, ApiError> {
        let Some(v) = self.get(k) else {
            return Ok(None);
        };
        let x = v.as_f64().ok_or_else(|| {
            ApiError::invalid(k, format!("{k} must be a number, not {}", type_name(v)))
        })?;
        let ok = x.is_finite()
            && (if lo_open {
                x > lo as f64
            } else {
                x >= lo as f64
            })
            && x <= hi as f64;
        if !ok {
            let low = if lo_open { "<" } else { "<=" };
            return Err(ApiError::invalid(
                k,
                format!("{k} = {x} is out of range: it must be {lo} {low} {k} <= {hi}"),
            ));
        }
        Ok(Some(x as f32))
    }

    pub(super) fn uint(&self, k: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        let Some(v) = self.get(k) else {
            return Ok(None);
        };
        let bad = || {
            ApiError::invalid(
                k,
                format!("{k} must be an integer from {min} to {max}, not {v}"),
            )
        };
        let x = match v {
            Value::Number(n) => n
                .as_u64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1.8e19)
                        .map(|f| f as u64)
                })
                .ok_or_else(bad)?,
            _ => {
                return Err(ApiError::invalid(
                    k,
                    format!("{k} must be an integer, not {}", type_name(v)),
                ))
            }
        };
        if x < min || x > max {
            return Err(bad());
        }
        Ok(Some(x))
    }

    pub(super) fn bool(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ApiError::invalid(
                k,
                format!("{k} must be a boolean, not {}", type_name(v)),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{parse_chat, Limits};
    use serde_json::json;

    #[test]
    fn body_that_is_not_json_or_not_an_object() {
        let e = parse_json(br#"{"messages": [], "temperature": NaN}"#).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("NaN and Infinity"), "{}", e.message);
        let e = parse_json(b"{").unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        let e = parse_chat(&json!([1]), &Limits::default()).unwrap_err();
        assert!(e.message.contains("must be a JSON object"), "{}", e.message);
    }
}
