//! The per-token cost of structured output: build the llguidance token trie for a tokenizer, then walk a
//! JSON schema grammar token by token (a seeded random allowed token each step), timing each mask.
//!
//! cargo run --release -p qwen3vl-engine --example json_mask_cost -- [tokenizer.json] [vocab]

use std::sync::Arc;
use std::time::Instant;

use qwen3vl_engine::sampling::Rng;
use qwen3vl_engine::{JsonGrammar, TokenBytes};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| "testdata/tokenizer/tokenizer.json".into());
    let vocab: usize = args.next().map_or(151936, |v| v.parse().expect("vocab"));
    let tok = tokenizers::Tokenizer::from_file(&path).expect("tokenizer");
    let table = TokenBytes::from_tokenizer(&tok);
    let eos = tok.token_to_id("<|im_end|>").expect("<|im_end|>");
    let t = Instant::now();
    let g = Arc::new(JsonGrammar::new(&table, vocab, eos).expect("trie"));
    println!(
        "token trie for {vocab} ids: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let schemas = [
        ("json_object", None),
        (
            "schema",
            Some(serde_json::json!({"type": "object", "properties": {
                "name": {"type": "string"}, "age": {"type": "integer"},
                "tags": {"type": "array", "items": {"type": "string"}}},
                "required": ["name", "age", "tags"]})),
        ),
    ];
    for (name, schema) in schemas {
        let t = Instant::now();
        let f = g.for_schema(schema).expect("schema");
        let compile = t.elapsed().as_secs_f64() * 1e3;
        let mut times = Vec::new();
        let mut rng = Rng::new(1);
        for _ in 0..20 {
            let mut c = f.start().expect("start");
            for _ in 0..64 {
                let mut logits = vec![0.0f32; vocab];
                let t = Instant::now();
                c.mask(&mut logits).expect("mask");
                times.push(t.elapsed().as_secs_f64() * 1e6);
                let allowed: Vec<u32> = (0..vocab as u32)
                    .filter(|&i| logits[i as usize] == 0.0)
                    .collect();
                if allowed.is_empty() || allowed == [eos] {
                    break;
                }
                // Prefer ending sometimes so walks cover whole values.
                let id = allowed[(rng.next_u64() % allowed.len() as u64) as usize];
                if id == eos {
                    break;
                }
                c.accept(id).expect("accept");
            }
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let p = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
        println!(
            "{name}: compile {compile:.1} ms; mask per token over {} steps: mean {:.0} µs, p50 {:.0} µs, p90 {:.0} µs, max {:.0} µs",
            times.len(),
            times.iter().sum::<f64>() / times.len() as f64,
            p(0.5),
            p(0.9),
            p(1.0)
        );
    }
}
