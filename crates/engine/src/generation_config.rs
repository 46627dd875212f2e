//! `generation_config.json`: the checkpoint's default decoding settings (spec 7.2).

use std::path::Path;

use serde_json::Value;

use crate::sampling::SamplingParams;

/// `<|im_end|>` and `<|endoftext|>`: the Instruct models stop on either.
pub const INSTRUCT_EOS: [u32; 2] = [151645, 151643];

#[derive(Debug, thiserror::Error)]
pub enum GenerationConfigError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: field {field}: {msg}")]
    Field {
        path: String,
        field: &'static str,
        msg: String,
    },
    #[error("{path}: the top level must be a JSON object")]
    NotAnObject { path: String },
    #[error(
        "{path}: field {field}: token id {id} is not in the vocabulary of {vocab_size} tokens"
    )]
    TokenId {
        path: String,
        field: &'static str,
        id: u32,
        vocab_size: usize,
    },
}

/// Decoding defaults of a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationConfig {
    pub bos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    /// Generation stops on any of these.
    pub eos_token_ids: Vec<u32>,
    pub do_sample: bool,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub repetition_penalty: f32,
    pub max_new_tokens: Option<usize>,
}

impl Default for GenerationConfig {
    /// The Instruct checkpoints' file (spec 7.2).
    fn default() -> Self {
        GenerationConfig {
            bos_token_id: Some(151643),
            pad_token_id: Some(151643),
            eos_token_ids: INSTRUCT_EOS.to_vec(),
            do_sample: true,
            temperature: 0.7,
            top_p: 0.8,
            top_k: 20,
            repetition_penalty: 1.0,
            max_new_tokens: None,
        }
    }
}

impl GenerationConfig {
    /// `dir/generation_config.json`; the Instruct defaults when the file does not exist.
    pub fn from_dir(dir: &Path) -> Result<GenerationConfig, GenerationConfigError> {
        let path = dir.join("generation_config.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_json(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(GenerationConfigError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Parse the file's text. A field the file does not have takes transformers' class default
    /// (do_sample false, temperature 1, top_p 1, top_k 50), except eos, which falls back to the Instruct ids.
    pub fn from_json(text: &str, path: &str) -> Result<GenerationConfig, GenerationConfigError> {
        let v: Value =
            serde_json::from_str(text).map_err(|source| GenerationConfigError::Json {
                path: path.to_string(),
                source,
            })?;
        let err = |field: &'static str, msg: &str| GenerationConfigError::Field {
            path: path.to_string(),
            field,
            msg: msg.to_string(),
        };
        if !v.is_object() {
            return Err(GenerationConfigError::NotAnObject {
                path: path.to_string(),
            });
        }
        let id = |field: &'static str| -> Result<Option<u32>, GenerationConfigError> {
            match v.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| err(field, "expected a token id (non-negative integer)")),
            }
        };
        let num = |field: &'static str, default: f32| -> Result<f32, GenerationConfigError> {
            match v.get(field) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f as f32)
                    .ok_or_else(|| err(field, "expected a finite number")),
            }
        };
        let eos_token_ids = match v.get("eos_token_id") {
            None | Some(Value::Null) => INSTRUCT_EOS.to_vec(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| err("eos_token_id", "expected token ids"))?,
            Some(x) => vec![x
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| err("eos_token_id", "expected a token id or a list of them"))?],
        };
        let top_k = match v.get("top_k") {
            None | Some(Value::Null) => 50,
            Some(x) => x
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| err("top_k", "expected a non-negative integer"))?,
        };
        let max_new_tokens = match v.get("max_new_tokens") {
            None | Some(Value::Null) => None,
            Some(x) => Some(
                x.as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| err("max_new_tokens", "expected a non-negative integer"))?,
            ),
        };
        let do_sample = match v.get("do_sample") {
            None | Some(Value::Null) => false,
            Some(x) => x
                .as_bool()
                .ok_or_else(|| err("do_sample", "expected true or false"))?,
        };
        let g = GenerationConfig {
            bos_token_id: id("bos_token_id")?,
            pad_token_id: id("pad_token_id")?,
            eos_token_ids,
            do_sample,
            temperature: num("temperature", 1.0)?,
            top_p: num("top_p", 1.0)?,
            top_k,
            repetition_penalty: num("repetition_penalty", 1.0)?,
            max_new_tokens,
        };
        g.sampling_params(0)
            .validate()
            .map_err(|e| GenerationConfigError::Field {
                path: path.to_string(),
                field: "sampling",
                msg: e.to_string(),
            })?;
        Ok(g)
    }

    /// Every token id of the file (eos, bos, pad) must lie in a vocabulary of `vocab_size` tokens: an
    /// id the model can never sample would make a stop condition that never fires. `path` names the file.
    pub fn check_vocab(&self, vocab_size: usize, path: &str) -> Result<(), GenerationConfigError> {
        let ids = self
            .eos_token_ids
            .iter()
            .map(|&id| ("eos_token_id", id))
            .chain(self.bos_token_id.map(|id| ("bos_token_id", id)))
            .chain(self.pad_token_id.map(|id| ("pad_token_id", id)));
        for (field, id) in ids {
            if id as usize >= vocab_size {
                return Err(GenerationConfigError::TokenId {
                    path: path.to_string(),
                    field,
                    id,
                    vocab_size,
                });
            }
        }
        Ok(())
    }

    /// The sampling parameters these defaults describe (greedy when `do_sample` is false).
    pub fn sampling_params(&self, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: if self.do_sample {
                self.temperature
            } else {
                0.0
            },
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: 0.0,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed,
        }
    }

    /// The file as the Instruct checkpoints ship it (for `init-random`).
    pub fn to_json(&self) -> String {
        let mut m = serde_json::Map::new();
        if let Some(b) = self.bos_token_id {
            m.insert("bos_token_id".into(), b.into());
        }
        if let Some(p) = self.pad_token_id {
            m.insert("pad_token_id".into(), p.into());
        }
        m.insert("do_sample".into(), self.do_sample.into());
        m.insert("eos_token_id".into(), self.eos_token_ids.clone().into());
        m.insert("top_k".into(), self.top_k.into());
        m.insert("top_p".into(), round6(self.top_p).into());
        m.insert("temperature".into(), round6(self.temperature).into());
        m.insert(
            "repetition_penalty".into(),
            round6(self.repetition_penalty).into(),
        );
        if let Some(n) = self.max_new_tokens {
            m.insert("max_new_tokens".into(), n.into());
        }
        m.insert("transformers_version".into(), "4.57.0.dev0".into());
        serde_json::to_string_pretty(&Value::Object(m)).unwrap_or_default()
    }
}

/// f32 → the short decimal a human wrote (0.7, not 0.699999988079071).
fn round6(x: f32) -> f64 {
    (x as f64 * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruct_file_parses() {
        let text = r#"{"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": true,
            "eos_token_id": [151645, 151643], "top_k": 20, "top_p": 0.8, "temperature": 0.7,
            "repetition_penalty": 1.0, "transformers_version": "4.56.0"}"#;
        let g = GenerationConfig::from_json(text, "g.json").unwrap();
        assert_eq!(g, GenerationConfig::default());
        let p = g.sampling_params(5);
        assert_eq!((p.temperature, p.top_k, p.top_p, p.seed), (0.7, 20, 0.8, 5));
    }

    #[test]
    fn round_trips_through_to_json() {
        let g = GenerationConfig::default();
        let back = GenerationConfig::from_json(&g.to_json(), "x").unwrap();
        assert_eq!(back, g);
        assert!(
            g.to_json().contains("\"temperature\": 0.7"),
            "{}",
            g.to_json()
        );
    }

    #[test]
    fn single_eos_and_class_defaults() {
        let g = GenerationConfig::from_json(r#"{"eos_token_id": 7}"#, "g").unwrap();
        assert_eq!(g.eos_token_ids, vec![7]);
        assert!(!g.do_sample);
        assert_eq!(g.sampling_params(0).temperature, 0.0);
        assert_eq!((g.top_k, g.top_p, g.temperature), (50, 1.0, 1.0));
        let g = GenerationConfig::from_json("{}", "g").unwrap();
        assert_eq!(g.eos_token_ids, INSTRUCT_EOS.to_vec());
    }

    #[test]
    fn bad_fields_are_named() {
        for (text, field) in [
            (r#"{"eos_token_id": "x"}"#, "eos_token_id"),
            (r#"{"eos_token_id": [1, -2]}"#, "eos_token_id"),
            (r#"{"top_k": 1.5}"#, "top_k"),
            (r#"{"temperature": "hot"}"#, "temperature"),
            (r#"{"do_sample": 1}"#, "do_sample"),
            (r#"{"top_p": 2.0}"#, "top_p"),
        ] {
            let e = GenerationConfig::from_json(text, "g.json")
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
        assert!(GenerationConfig::from_json("{", "g.json").is_err());
    }

    #[test]
    fn a_top_level_other_than_an_object_is_refused() {
        for text in ["[]", "3", "null", "\"x\""] {
            let e = GenerationConfig::from_json(text, "g.json")
                .unwrap_err()
                .to_string();
            assert_eq!(e, "g.json: the top level must be a JSON object", "{text}");
        }
    }

    #[test]
    fn token_ids_must_lie_in_the_vocabulary() {
        let g = GenerationConfig::from_json(r#"{"eos_token_id": [5, 1000000000]}"#, "g").unwrap();
        let e = g.check_vocab(151936, "g.json").unwrap_err().to_string();
        assert_eq!(
            e,
            "g.json: field eos_token_id: token id 1000000000 is not in the vocabulary of 151936 tokens"
        );
        let g =
            GenerationConfig::from_json(r#"{"eos_token_id": 5, "pad_token_id": 9}"#, "g").unwrap();
        assert!(g.check_vocab(10, "g").is_ok());
        assert!(g
            .check_vocab(9, "g")
            .unwrap_err()
            .to_string()
            .contains("pad_token_id"));
    }

    #[test]
    fn missing_file_means_instruct_defaults() {
        let g = GenerationConfig::from_dir(Path::new("/nonexistent/dir")).unwrap();
        assert_eq!(g, GenerationConfig::default());
    }
}
