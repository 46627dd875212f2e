//! Constrained output: a per-sequence mask over the vocabulary applied to the logits before sampling
//! (`response_format` json_object / json_schema of the OpenAI API).
//!
//! [`TokenConstraint`] is the hook the decoding loop calls: `mask` the next token's logits, then `accept`
//! the token chosen. [`JsonGrammar`] builds such constraints from a JSON schema with `llguidance` (the
//! grammar engine llama.cpp and mistral.rs use): one token trie per tokenizer, built once, shared by every
//! request; one Earley parser per sequence.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory, TokenParser};
use serde_json::Value;

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
    /// Errors name what in the schema is not supported, or by how much it is too deep
    /// ([`check_schema_depth`]).
    ///
    /// The schema is compiled once, here, on a thread of its own with a [`COMPILE_STACK`] stack (the
    /// compiler recurses once per level: see [`MAX_SCHEMA_DEPTH`]), whatever thread calls this (a tokio
    /// blocking thread has 2 MiB); each sequence then starts from a copy of the compiled parser.
    pub fn for_schema(
        self: &Arc<Self>,
        schema: Option<serde_json::Value>,
    ) -> Result<Arc<dyn ConstraintFactory>, String> {
        let mut schema = schema.unwrap_or_else(|| serde_json::json!({"type": "object"}));
        check_schema(&schema)?;
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
        // Compile now so a bad schema is refused before the request is queued.
        let parser = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("qwen3vl-schema".into())
                .stack_size(COMPILE_STACK)
                .spawn_scoped(s, || self.factory.create_parser(grammar))
                .map_err(|e| format!("cannot start the schema compiler's thread: {e}"))?
                .join()
                .map_err(|_| "the JSON schema compiler panicked".to_string())
        })?
        .map_err(|e| format!("the JSON schema is not supported: {e}"))?;
        Ok(Arc::new(SchemaFactory { parser }))
    }
}

/// Most levels a JSON schema may nest, as [`check_schema_depth`] counts them.
///
/// llguidance's schema compiler recurses once per nested subschema, and at a `$ref` into the schema it
/// names (once per distinct `$ref` string). serde_json's parser (which refuses 128 nested levels) bounds
/// the first but not the second: `{"$defs": {"d0": {"$ref": "#/$defs/d1"}, "d1": ...}}` is flat JSON, yet
/// compiling a chain of 800 such links overflows a 2 MiB thread (about 3 KB of stack a link in release).
/// 1000 levels is ~40 `$defs` of 20 levels each, and at most a few MB of stack.
pub const MAX_SCHEMA_DEPTH: usize = 1000;

/// Stack of the thread that compiles a schema: 16× the most a schema at [`MAX_SCHEMA_DEPTH`] was measured
/// to need (under 4 MiB, a chain of `$ref`s through `items` or `properties`), so frames may grow with
/// another build or llguidance version. Reserved, not committed: only the pages a compile touches are used.
pub const COMPILE_STACK: usize = 64 << 20;

/// Largest magnitude of an integer schema's bound (`minimum`, `maximum`, `exclusiveMinimum`,
/// `exclusiveMaximum`): 2^53, the largest integer every JSON number (an f64) holds exactly. llguidance
/// writes an integer range as a regex over its digits and recurses through it: a negative range with
/// 100-digit bounds (`{"type": "integer", "minimum": -1e100, "maximum": -1e99}`) overflowed even the
/// 64 MiB [`COMPILE_STACK`] (found by fuzzing). Number (float) ranges are not affected.
pub const MAX_INTEGER_BOUND: f64 = 9_007_199_254_740_992.0;

/// The checks a JSON schema passes before it is compiled: [`check_schema_depth`] and
/// [`check_integer_bounds`]. Errors say what to change.
pub fn check_schema(schema: &Value) -> Result<(), String> {
    check_schema_depth(schema)?;
    check_integer_bounds(schema)
}

/// Refuses an integer-typed subschema (`"type": "integer"`, or a list of types with "integer") with a
/// bound of magnitude over [`MAX_INTEGER_BOUND`]. Iterative, linear in the size of the schema.
pub fn check_integer_bounds(schema: &Value) -> Result<(), String> {
    let mut todo = vec![schema];
    while let Some(v) = todo.pop() {
        match v {
            Value::Object(o) => {
                let integer = match o.get("type") {
                    Some(Value::String(t)) => t == "integer",
                    Some(Value::Array(ts)) => ts.iter().any(|t| t == "integer"),
                    _ => false,
                };
                if integer {
                    for key in ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] {
                        if let Some(b) = o.get(key).and_then(Value::as_f64) {
                            if b.abs() > MAX_INTEGER_BOUND {
                                return Err(format!(
                                    "the JSON schema gives an integer the bound `{key}` {b:e}, beyond \
                                     ±2^53 (9007199254740992), the largest the engine accepts"
                                ));
                            }
                        }
                    }
                }
                todo.extend(o.values());
            }
            Value::Array(a) => todo.extend(a),
            _ => {}
        }
    }
    Ok(())
}

/// Refuses a schema deeper than [`MAX_SCHEMA_DEPTH`] levels, counted as: its JSON nesting (objects and
/// arrays), plus, for each distinct `$ref` string in it, 1 + the nesting of the value that ref names.
/// This bounds how deep the compiler can recurse: along any chain of calls it enters each `$ref` at most
/// once, and inside each named schema goes no deeper than that schema nests. (A `$ref` llguidance cannot
/// resolve, such as a remote one, is refused by the compiler and not counted; refs in unused `$defs` are.)
pub fn check_schema_depth(schema: &Value) -> Result<(), String> {
    let depth = schema_depth(schema);
    if depth > MAX_SCHEMA_DEPTH {
        return Err(format!(
            "the JSON schema nests {depth} levels deep, over the limit of {MAX_SCHEMA_DEPTH} (its own \
             nesting of objects and arrays, plus for each distinct `$ref` 1 + the nesting of the schema \
             it names): flatten it, or use fewer chained `$ref`s"
        ));
    }
    Ok(())
}

/// The depth [`check_schema_depth`] bounds. Linear in the size of `schema` and iterative (no recursion
/// of its own, whatever the nesting).
pub fn schema_depth(schema: &Value) -> usize {
    // 1. Every distinct `$ref` string, and how many of them name each value.
    let mut refs: HashSet<&str> = HashSet::new();
    let mut todo = vec![schema];
    while let Some(v) = todo.pop() {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(r)) = o.get("$ref") {
                    refs.insert(r);
                }
                todo.extend(o.values());
            }
            Value::Array(a) => todo.extend(a),
            _ => {}
        }
    }
    let mut named: HashMap<*const Value, usize> = HashMap::new();
    for r in refs {
        if let Some(t) = resolve_ref(schema, r) {
            *named.entry(t as *const Value).or_default() += 1;
        }
    }
    // 2. The nesting of every value, bottom-up (an explicit stack of (value, children left, deepest
    //    child so far)); each named value adds its count × (1 + its nesting).
    enum Kids<'a> {
        Object(serde_json::map::Values<'a>),
        Array(std::slice::Iter<'a, Value>),
    }
    fn kids(v: &Value) -> Option<Kids<'_>> {
        match v {
            Value::Object(o) => Some(Kids::Object(o.values())),
            Value::Array(a) => Some(Kids::Array(a.iter())),
            _ => None,
        }
    }
    let mut total = 0usize;
    let nested = |v: &Value, depth: usize, total: &mut usize| {
        if let Some(n) = named.get(&(v as *const Value)) {
            *total = total.saturating_add(n.saturating_mul(1 + depth));
        }
    };
    let Some(k) = kids(schema) else {
        nested(schema, 0, &mut total);
        return total;
    };
    let mut stack: Vec<(&Value, Kids, usize)> = vec![(schema, k, 0)];
    loop {
        let top = stack.last_mut().expect("the root stays until it is done");
        let next = match &mut top.1 {
            Kids::Object(it) => it.next(),
            Kids::Array(it) => it.next(),
        };
        match next {
            Some(c) => match kids(c) {
                Some(k) => stack.push((c, k, 0)),
                None => nested(c, 0, &mut total),
            },
            None => {
                let (v, _, deepest_child) = stack.pop().expect("not empty");
                let depth = 1 + deepest_child;
                nested(v, depth, &mut total);
                match stack.last_mut() {
                    Some(parent) => parent.2 = parent.2.max(depth),
                    // The root's own nesting.
                    None => return total.saturating_add(depth),
                }
            }
        }
    }
}

/// The value `r` names, resolved as llguidance does without its `referencing` feature: `#` is the
/// root, `#/a/0/b` a path of object keys and array indices from it; anything else it refuses.
fn resolve_ref<'a>(root: &'a Value, r: &str) -> Option<&'a Value> {
    if r == "#" || r == "#/" {
        return Some(root);
    }
    let mut v = root;
    for seg in r.strip_prefix("#/")?.split('/') {
        v = match v {
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => v.get(seg)?,
        };
    }
    Some(v)
}

/// Starts each sequence from a copy of the parser compiled once by [`JsonGrammar::for_schema`].
struct SchemaFactory {
    parser: TokenParser,
}

impl ConstraintFactory for SchemaFactory {
    fn start(&self) -> Result<Box<dyn TokenConstraint>, String> {
        Ok(Box::new(LlgConstraint {
            matcher: Matcher::new(Ok(self.parser.deep_clone())),
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

#[cfg(test)]
mod depth_tests {
    use super::*;
    use serde_json::json;

    use crate::dev::schemas::ref_chain;

    fn grammar() -> Arc<JsonGrammar> {
        let toks: Vec<[u8; 1]> = (0..=255u8).map(|b| [b]).collect();
        let mut refs: Vec<&[u8]> = toks.iter().map(|t| &t[..]).collect();
        refs.push(b"<|im_end|>");
        let mut special = vec![false; refs.len()];
        special[256] = true;
        let t = TokenBytes::from_parts(&refs, &special);
        Arc::new(JsonGrammar::new(&t, t.len(), 256).unwrap())
    }

    #[test]
    fn schema_depth_counts_nesting_and_each_distinct_ref_once() {
        let cases = [
            (json!({"type": "string"}), 1),
            (json!({"type": "array", "items": {"type": "string"}}), 2),
            (ref_chain(1), 11),
            (ref_chain(248), 999),
            // A recursive schema: the cycle is counted once, as the compiler follows it once.
            (
                json!({"$defs": {"a": {"type": "object", "properties": {"next": {"$ref": "#/$defs/a"}}}},
                       "$ref": "#/$defs/a"}),
                5 + 4,
            ),
            // `#` names the root (3 levels), used twice: counted once.
            (
                json!({"type": "object", "properties": {"l": {"$ref": "#"}, "r": {"$ref": "#"}}}),
                3 + 4,
            ),
            // Two strings naming one value (llguidance compiles each): counted twice.
            (
                json!({"anyOf": [{"type": "string"}, {"$ref": "#/anyOf/0"}, {"$ref": "#/anyOf/00"}]}),
                3 + 2 + 2,
            ),
            // Refs the compiler refuses name nothing.
            (
                json!({"anyOf": [{"$ref": "#/nope"}, {"$ref": "https://example.com/s.json"}]}),
                3,
            ),
            (json!(true), 0),
        ];
        for (schema, want) in cases {
            assert_eq!(schema_depth(&schema), want, "{schema}");
        }
    }

    /// The worst case found: a chain of `$ref`s just under the limit (248 links: depth 999) needs 2–4 MiB
    /// of stack to compile in release; a tokio blocking thread, the scheduler's and a test's have 2 MiB.
    /// Before the schema compiled on a thread of its own this aborted the process with a stack overflow.
    #[test]
    fn a_ref_chain_at_the_depth_limit_compiles_and_masks_from_a_2_mib_thread() {
        let g = grammar();
        let schema = ref_chain(248);
        assert_eq!(schema_depth(&schema), MAX_SCHEMA_DEPTH - 1);
        let allowed = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let f = g.for_schema(Some(schema)).expect("compiles");
                let mut c = f.start().expect("starts");
                let mut l = vec![0.0f32; 257];
                c.mask(&mut l).expect("masks");
                (0..257).filter(|&i| l[i] == 0.0).collect::<Vec<_>>()
            })
            .unwrap()
            .join()
            .unwrap();
        // The answer is an object: `{` (no free whitespace) is the only first token.
        assert_eq!(allowed, vec![b'{' as usize]);
    }

    #[test]
    fn a_schema_over_the_depth_limit_is_refused_naming_the_depth_and_the_limit() {
        let g = grammar();
        let e = g.for_schema(Some(ref_chain(249))).err().expect("refused");
        assert!(
            e.contains("nests 1003 levels deep, over the limit of 1000"),
            "{e}"
        );
        assert!(check_schema_depth(&ref_chain(248)).is_ok());
    }

    /// An integer range with 100-digit negative bounds overflowed the 64 MiB compiler thread (found by
    /// the `request` fuzz target): refused before compiling, naming the bound; bounds within ±2^53 and
    /// huge *number* bounds compile. Without the check this test aborts the process.
    #[test]
    fn integer_bounds_beyond_2_pow_53_are_refused_before_compiling() {
        let g = grammar();
        for schema in [
            json!({"type": "integer", "minimum": -1e100, "maximum": -1e99}),
            json!({"type": ["integer", "null"], "minimum": -1e308, "maximum": -1e308}),
            json!({"type": "object", "properties": {"n": {"type": "integer", "exclusiveMaximum": 1e16}}}),
        ] {
            let e = g.for_schema(Some(schema.clone())).err().expect("refused");
            assert!(
                e.contains("beyond ±2^53") && e.contains("the bound `"),
                "{schema}: {e}"
            );
        }
        let e = check_integer_bounds(&json!({"type": "integer", "minimum": -1e100})).unwrap_err();
        assert!(e.contains("`minimum` -1e100"), "{e}");
        let at_limit = json!({"type": "integer", "minimum": -9007199254740992i64, "maximum": -9007199254740000i64});
        assert!(g.for_schema(Some(at_limit)).is_ok());
        // float bounds are not integer bounds: not this check's business
        assert!(check_integer_bounds(&json!({"type": "number", "minimum": -1e308})).is_ok());
    }
}
