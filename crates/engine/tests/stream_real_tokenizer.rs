//! Streaming detokenization with the real Qwen3 tokenizer (testdata/tokenizer/tokenizer.json).

use std::sync::Arc;

use qwen3vl_engine::{StreamDecoder, TokenBytes};
use tokenizers::Tokenizer;

fn tokenizer() -> Tokenizer {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/tokenizer/tokenizer.json"
    );
    Tokenizer::from_file(path).expect("load testdata tokenizer")
}

/// Stream `ids` one at a time; every piece is a String (whole UTF-8 by construction); return them.
fn stream(table: &Arc<TokenBytes>, ids: &[u32], skip_special: bool) -> Vec<String> {
    let mut d = StreamDecoder::new(table.clone(), skip_special);
    let mut pieces: Vec<String> = ids.iter().map(|&i| d.push(i)).collect();
    pieces.push(d.finish());
    pieces
}

#[test]
fn streaming_equals_decode_and_never_breaks_characters() {
    let tok = tokenizer();
    let table = Arc::new(TokenBytes::from_tokenizer(&tok));
    assert_eq!(table.len(), 151669);
    let vocab = tok.get_vocab(true);

    // 1. Ordinary BPE tokens: the concatenation equals decode().
    let text = "Hello, 世界! 你好🌍👩‍👩‍👧 naïve café — 数学公式 ∑x² ok\n\tend";
    let enc = tok.encode(text, false).unwrap();
    let ids = enc.get_ids();
    let pieces = stream(&table, ids, true);
    assert_eq!(pieces.concat(), tok.decode(ids, true).unwrap());
    assert_eq!(pieces.concat(), text);

    // 2. Every character split into single-byte tokens (GPT-2 byte alphabet): pieces only ever hold
    //    whole characters, and each multi-byte character appears exactly when its last byte arrives.
    let s = "你好🌍é";
    let byte_ids: Vec<u32> = s
        .bytes()
        .map(|b| {
            let c = gpt2_char(b);
            *vocab
                .get(&c.to_string())
                .expect("single-byte token in vocab")
        })
        .collect();
    assert_eq!(byte_ids.len(), 3 + 3 + 4 + 2);
    let pieces = stream(&table, &byte_ids, true);
    let expected: Vec<&str> = vec!["", "", "你", "", "", "好", "", "", "", "🌍", "", "é", ""];
    assert_eq!(pieces, expected);
    assert_eq!(tok.decode(&byte_ids, true).unwrap(), s);

    // 3. Special tokens are skipped or shown; <think> (added, not special) is always text.
    let im_end = 151645;
    let think = 151667;
    assert_eq!(stream(&table, &[im_end], true).concat(), "");
    assert_eq!(stream(&table, &[im_end], false).concat(), "<|im_end|>");
    assert_eq!(stream(&table, &[think], true).concat(), "<think>");

    // 4. A dangling prefix of a character at the end is flushed as U+FFFD, never a panic; ids beyond the
    //    vocabulary (151669..151935 are padding rows of the embedding) are U+FFFD too.
    let pieces = stream(&table, &byte_ids[..2], true);
    assert_eq!(pieces.concat(), "\u{FFFD}");
    assert_eq!(stream(&table, &[151935], true).concat(), "\u{FFFD}");
}

/// GPT-2 byte → character (the published table; independent of the engine's copy).
fn gpt2_char(b: u8) -> char {
    let printable =
        |x: u32| (33..=126).contains(&x) || (161..=172).contains(&x) || (174..=255).contains(&x);
    if printable(b as u32) {
        return char::from_u32(b as u32).unwrap();
    }
    let n = (0..b as u32).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}
