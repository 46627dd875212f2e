//! Constrained output: a per-sequence mask over the vocabulary applied to the logits before sampling
//! (`response_format` json_object / json_schema of the OpenAI API).
//!
//! [`TokenConstraint`] is the hook the decoding loop calls: `mask` the next token's logits, then `accept`
//! the token chosen. [`JsonGrammar`] builds such constraints from a JSON schema with `llguidance` (the
//! grammar engine llama.cpp and mistral.rs use): one token trie per tokenizer, built once, shared by every
//! request; one Earley parser per sequence.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};

use crate::stream::TokenBytes;

/// A per-sequence rule on which tokens may come next.
pub trait TokenConstraint: Send {
    /// Sets the logits (V) of the tokens not allowed next to −∞.
    fn mask(&mut self, logits: &mut [f32]) -> Result<(), String>;
    /// Advances past `id` (the token sampled from the masked logits).
    fn accept(&mut self, id: u32) -> Result<(), String>;
}

/// Makes a fresh [`TokenConstraint`] for each sequence of a request (`n` > 1 gets one each).
pub trait ConstraintFactory: Send + Sync {
    fn start(&self) -> Result<Box<dyn TokenConstraint>, String>;
}

/// A tokenizer's vocabulary as llguidance sees it: built once per loaded model (about 0.1 s for Qwen's
/// 151 k tokens), then shared.
pub struct JsonGrammar {
    factory: ParserFactory,
}

impl JsonGrammar {
    /// `table`: the bytes of every token; `vocab`: the model's vocabulary size (rows of the logits, may
    /// exceed the tokenizer's); `eos`: the token that ends a finished JSON value (`<|im_end|>`).
    pub fn new(table: &TokenBytes, vocab: usize, eos: u32) -> Result<JsonGrammar, String> {
        let words: Vec<Vec<u8>> = (0..vocab as u32)
            .map(|id| match table.bytes(id) {
                // Special tokens are marked so the grammar never produces them as text.
                Some(b) if table.is_special(id) => {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(b);
                    w
                }
                Some(b) => b.to_vec(),
                None => Vec::new(),
            })
            .collect();
        let trie = TokTrie::from(&TokRxInfo::new(vocab as u32, eos), &words);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(JsonGrammar { factory })
    }

    /// A factory of constraints for `schema` (`None`: any JSON object, the `json_object` format).
    /// Errors name what in the schema is not supported.
    pub fn for_schema(
        self: &Arc<Self>,
        schema: Option<serde_json::Value>,
    ) -> Result<Arc<dyn ConstraintFactory>, String> {
        let mut schema = schema.unwrap_or_else(|| serde_json::json!({"type": "object"}));
        // Fixed separators and no free whitespace (like OpenAI's strict mode): a weak model cannot then
        // fill its budget with blank lines. A schema may set its own `x-guidance` options.
        if let Some(o) = schema.as_object_mut() {
            o.entry("x-guidance").or_insert_with(|| {
                serde_json::json!({
                    "whitespace_flexible": false,
                    "item_separator": ", ",
                    "key_separator": ": ",
                })
            });
        }
        let grammar = TopLevelGrammar::from_json_schema(schema);
        // Compile once now so a bad schema is refused before the request is queued.
        self.factory
            .create_parser(grammar.clone())
            .map_err(|e| format!("the JSON schema is not supported: {e}"))?;
        Ok(Arc::new(SchemaFactory {
            grammar: self.clone(),
            top: grammar,
        }))
    }
}

struct SchemaFactory {
    grammar: Arc<JsonGrammar>,
    top: TopLevelGrammar,
}

impl ConstraintFactory for SchemaFactory {
    fn start(&self) -> Result<Box<dyn TokenConstraint>, String> {
        let parser = self.grammar.factory.create_parser(self.top.clone());
        Ok(Box::new(LlgConstraint {
            matcher: Matcher::new(parser),
        }))
    }
}

struct LlgConstraint {
    matcher: Matcher,
}

impl TokenConstraint for LlgConstraint {
    fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        let allowed = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| format!("constrained output: {e}"))?;
        let words = allowed.as_slice();
        // Whole 32-token words at a time: a zero word (nothing allowed) is the common case.
        for (w, chunk) in logits.chunks_mut(32).enumerate() {
            let bits = words.get(w).copied().unwrap_or(0);
            if bits == u32::MAX {
                continue;
            }
            for (j, x) in chunk.iter_mut().enumerate() {
                if bits >> j & 1 == 0 {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        Ok(())
    }

    fn accept(&mut self, id: u32) -> Result<(), String> {
        if self.matcher.is_stopped() {
            return Ok(());
        }
        self.matcher
            .consume_token(id)
            .map_err(|e| format!("constrained output: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level vocabulary: every single byte, a few multi-byte tokens, and a special EOS.
    fn table() -> (TokenBytes, u32) {
        let mut toks: Vec<Vec<u8>> = (0u8..=255).map(|b| vec![b]).collect();
        for w in [&b"{\""[..], b"\":", b"true", b"null", b"abc"] {
            toks.push(w.to_vec());
        }
        toks.push(b"<|im_end|>".to_vec());
        let eos = toks.len() as u32 - 1;
        let mut special = vec![false; toks.len()];
        special[eos as usize] = true;
        let refs: Vec<&[u8]> = toks.iter().map(|t| t.as_slice()).collect();
        (TokenBytes::from_parts(&refs, &special), eos)
    }

    #[test]
    fn json_object_mask_allows_only_valid_continuations() {
        let (t, eos) = table();
        let vocab = t.len() + 3; // padding rows beyond the tokenizer
        let g = Arc::new(JsonGrammar::new(&t, vocab, eos).unwrap());
        let f = g.for_schema(None).unwrap();
        let mut c = f.start().unwrap();
        let mut l = vec![0.0f32; vocab];
        c.mask(&mut l).unwrap();
        let allowed: Vec<usize> = (0..vocab).filter(|&i| l[i] == 0.0).collect();
        // An object must start with `{` (possibly after whitespace); EOS and padding never.
        assert!(allowed.contains(&(b'{' as usize)));
        assert!(!allowed.contains(&(b'a' as usize)));
        assert!(!allowed.contains(&(b'[' as usize)));
        assert!(!allowed.contains(&(eos as usize)));
        assert!(!allowed.contains(&(vocab - 1)));
        for b in b"{}" {
            c.accept(*b as u32).unwrap();
        }
        let mut l = vec![0.0f32; vocab];
        c.mask(&mut l).unwrap();
        assert_eq!(l[eos as usize], 0.0, "a complete object may end");
    }

    #[test]
    fn schema_errors_are_reported() {
        let (t, eos) = table();
        let g = Arc::new(JsonGrammar::new(&t, t.len(), eos).unwrap());
        let e = g
            .for_schema(Some(serde_json::json!({"type": "no-such-type"})))
            .err()
            .expect("refused");
        assert!(e.contains("schema"), "{e}");
    }
}
