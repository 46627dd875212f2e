//! Streaming detokenization and stop strings.
//!
//! A byte-level BPE token is a run of *bytes*, not of characters: one Chinese character or emoji may be
//! split over several tokens, and a token may end in the middle of a UTF-8 sequence. [`StreamDecoder`]
//! keeps the bytes of incomplete sequences back until they complete, so every piece it emits is whole
//! UTF-8 (RELIABILITY 12). Bytes that can never form a character become U+FFFD, like `decode` does.
//!
//! The token → bytes table ([`TokenBytes`]) is built once per tokenizer from its vocabulary:
//! - ByteLevel tokenizers (Qwen, GPT-2): each character of the token string maps back to one byte;
//! - byte-fallback tokens `<0xNN>` (SentencePiece-style) are the byte NN; `▁` is a space;
//! - added tokens (`<|im_end|>`, `<think>` …) are their text; special ones are skipped when asked.

use std::sync::Arc;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::Tokenizer;

/// GPT-2's byte ↔ printable-character map: printable Latin-1 bytes map to themselves, the other 68 bytes
/// to U+0100 onwards in byte order.
fn byte_level_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut n = 0u32;
    for b in 0..256u32 {
        out[b as usize] = if printable(b) {
            char::from_u32(b).unwrap_or('\0')
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
    }
    out
}

/// How token strings turn back into bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    ByteLevel,
    /// SentencePiece-like: `<0xNN>` byte tokens, `▁` for space.
    Pieces,
}

/// The bytes of every token id of one tokenizer.
#[derive(Debug)]
pub struct TokenBytes {
    /// Token i's bytes are data[offsets[i]..offsets[i+1]].
    data: Vec<u8>,
    offsets: Vec<u32>,
    special: Vec<bool>,
}

impl TokenBytes {
    pub fn from_tokenizer(tok: &Tokenizer) -> TokenBytes {
        let scheme = match tok.get_decoder() {
            Some(DecoderWrapper::ByteLevel(_)) => Scheme::ByteLevel,
            _ => Scheme::Pieces,
        };
        let mut inverse = std::collections::HashMap::with_capacity(256);
        for (b, c) in byte_level_chars().iter().enumerate() {
            inverse.insert(*c, b as u8);
        }
        let added = tok.get_added_tokens_decoder();
        let n = tok
            .get_vocab_size(true)
            .max(added.keys().map(|&k| k as usize + 1).max().unwrap_or(0));
        let mut data = Vec::with_capacity(n * 6);
        let mut offsets = Vec::with_capacity(n + 1);
        let mut special = vec![false; n];
        offsets.push(0u32);
        for id in 0..n as u32 {
            if let Some(a) = added.get(&id) {
                data.extend_from_slice(a.content.as_bytes());
                special[id as usize] = a.special;
            } else if let Some(s) = tok.id_to_token(id) {
                match scheme {
                    Scheme::ByteLevel => {
                        for c in s.chars() {
                            match inverse.get(&c) {
                                Some(&b) => data.push(b),
                                None => {
                                    let mut buf = [0u8; 4];
                                    data.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                                }
                            }
                        }
                    }
                    Scheme::Pieces => match byte_fallback(&s) {
                        Some(b) => data.push(b),
                        None => data.extend_from_slice(s.replace('\u{2581}', " ").as_bytes()),
                    },
                }
            }
            offsets.push(data.len() as u32);
        }
        TokenBytes {
            data,
            offsets,
            special,
        }
    }

    /// A table from explicit token bytes and special flags (tests, custom vocabularies).
    pub fn from_parts(tokens: &[&[u8]], special: &[bool]) -> TokenBytes {
        let mut data = Vec::new();
        let mut offsets = vec![0u32];
        for t in tokens {
            data.extend_from_slice(t);
            offsets.push(data.len() as u32);
        }
        let mut special = special.to_vec();
        special.resize(tokens.len(), false);
        TokenBytes {
            data,
            offsets,
            special,
        }
    }

    /// Number of ids in the table.
    pub fn len(&self) -> usize {
        self.special.len()
    }

    pub fn is_empty(&self) -> bool {
        self.special.is_empty()
    }

    /// The bytes of `id`, or None for an id outside the vocabulary.
    pub fn bytes(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        if i >= self.special.len() {
            return None;
        }
        Some(&self.data[self.offsets[i] as usize..self.offsets[i + 1] as usize])
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }
}

/// `<0xNN>` → NN.
fn byte_fallback(s: &str) -> Option<u8> {
    let hex = s.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Turns token ids into text, one token at a time, never splitting a UTF-8 sequence.
#[derive(Clone, Debug)]
pub struct StreamDecoder {
    table: Arc<TokenBytes>,
    skip_special: bool,
    /// Bytes of an incomplete UTF-8 sequence at the end of the stream.
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// `skip_special`: drop special tokens (`<|im_end|>` …) from the text, like `decode(.., true)`.
    pub fn new(table: Arc<TokenBytes>, skip_special: bool) -> StreamDecoder {
        StreamDecoder {
            table,
            skip_special,
            pending: Vec::new(),
        }
    }

    /// The text that token `id` completes (possibly empty). An id outside the vocabulary is U+FFFD.
    pub fn push(&mut self, id: u32) -> String {
        match self.table.bytes(id) {
            None => {
                let mut s = self.flush_lossy();
                s.push('\u{FFFD}');
                s
            }
            Some(_) if self.skip_special && self.table.is_special(id) => String::new(),
            Some(b) => {
                self.pending.extend_from_slice(b);
                self.take_complete()
            }
        }
    }

    /// Whatever is still held back (an incomplete sequence at the end becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        self.flush_lossy()
    }

    /// Forget held-back bytes (start of a new turn).
    pub fn reset(&mut self) {
        self.pending.clear();
    }

    fn flush_lossy(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }

    /// Emit the longest prefix of `pending` that is valid UTF-8, replacing invalid bytes by U+FFFD and
    /// keeping a trailing incomplete sequence.
    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // Safety of the slice: from_utf8 said these bytes are valid.
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..start + valid])
                            .unwrap_or_default(),
                    );
                    match e.error_len() {
                        // Incomplete sequence at the end: wait for more bytes.
                        None => {
                            start += valid;
                            break;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start += valid + bad;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }
}

/// Holds back text that might be the start of a stop string; reports when one appears.
#[derive(Clone, Debug, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    held: String,
}

/// What to show after feeding a piece of text to [`StopStrings`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopCheck {
    /// Text safe to show now.
    pub emit: String,
    /// A stop string was found; `emit` ends right before it and generation should end.
    pub stopped: bool,
}

impl StopStrings {
    /// Empty stop strings are ignored.
    pub fn new(stops: &[String]) -> StopStrings {
        StopStrings {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopCheck {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return StopCheck {
                emit: std::mem::take(&mut self.held),
                stopped: false,
            };
        }
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let emit = self.held[..pos].to_string();
            self.held.clear();
            return StopCheck {
                emit,
                stopped: true,
            };
        }
        // Keep the longest suffix that is a proper prefix of some stop string.
        let mut keep_from = self.held.len();
        for (i, _) in self.held.char_indices() {
            let tail = &self.held[i..];
            if self.stops.iter().any(|s| s.starts_with(tail)) {
                keep_from = i;
                break;
            }
        }
        let emit = self.held[..keep_from].to_string();
        self.held.drain(..keep_from);
        StopCheck {
            emit,
            stopped: false,
        }
    }

    /// The held-back text at the end of generation (it was not a stop string).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_map_matches_gpt2() {
        let m = byte_level_chars();
        assert_eq!(m[b'a' as usize], 'a');
        assert_eq!(m[b' ' as usize], 'Ġ'); // U+0120
        assert_eq!(m[b'\n' as usize], 'Ċ'); // U+010A
        assert_eq!(m[0], 'Ā'); // U+0100
        assert_eq!(m[0xAD], 'Ń'); // U+0143 (soft hyphen is not printable)
        let mut all: Vec<char> = m.to_vec();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 256);
    }

    #[test]
    fn byte_fallback_tokens() {
        assert_eq!(byte_fallback("<0xE4>"), Some(0xE4));
        assert_eq!(byte_fallback("<0x0A>"), Some(0x0A));
        assert_eq!(byte_fallback("<0xZZ>"), None);
        assert_eq!(byte_fallback("<0x123>"), None);
        assert_eq!(byte_fallback("hello"), None);
    }

    fn table_from(tokens: &[&[u8]], special: &[bool]) -> Arc<TokenBytes> {
        Arc::new(TokenBytes::from_parts(tokens, special))
    }

    #[test]
    fn split_characters_are_held_until_complete() {
        // "é" = C3 A9, "🌍" = F0 9F 8C 8D
        let t = table_from(
            &[
                b"a",
                b"\xC3",
                b"\xA9",
                b"\xF0\x9F",
                b"\x8C",
                b"\x8D",
                b"<|im_end|>",
                b"\xFF",
            ],
            &[false, false, false, false, false, false, true, false],
        );
        let mut d = StreamDecoder::new(t.clone(), true);
        let pieces: Vec<String> = [0, 1, 2, 3, 4, 5, 6, 0]
            .iter()
            .map(|&i| d.push(i))
            .collect();
        assert_eq!(pieces, vec!["a", "", "é", "", "", "🌍", "", "a"]);
        assert_eq!(d.finish(), "");
        // Invalid byte → U+FFFD immediately; unknown id → U+FFFD; truncated sequence flushed at the end.
        let mut d = StreamDecoder::new(t.clone(), false);
        assert_eq!(d.push(7), "\u{FFFD}");
        assert_eq!(d.push(6), "<|im_end|>");
        assert_eq!(d.push(3), "");
        assert_eq!(d.push(0), "\u{FFFD}a"); // F0 9F then 'a': the sequence can never complete
        assert_eq!(d.push(1), "");
        assert_eq!(d.push(99), "\u{FFFD}\u{FFFD}");
        assert_eq!(d.push(1), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }

    #[test]
    fn stop_strings_hold_back_prefixes() {
        let mut s = StopStrings::new(&["STOP".to_string(), "\n\n".to_string()]);
        assert_eq!(s.push("hello S").emit, "hello ");
        assert_eq!(s.push("T").emit, "");
        let c = s.push("ink");
        assert_eq!((c.emit.as_str(), c.stopped), ("STink", false));
        let c = s.push("a\n");
        assert_eq!((c.emit.as_str(), c.stopped), ("a", false));
        let c = s.push("\nrest");
        assert_eq!((c.emit.as_str(), c.stopped), ("", true));
        let mut s = StopStrings::new(&["STOP".to_string()]);
        let c = s.push("abcSTOPdef");
        assert_eq!((c.emit.as_str(), c.stopped), ("abc", true));
        let mut s = StopStrings::new(&["端点".to_string()]);
        assert_eq!(s.push("好端").emit, "好");
        assert_eq!(s.finish(), "端");
        let mut none = StopStrings::new(&[String::new()]);
        assert_eq!(none.push("x").emit, "x");
    }
}
