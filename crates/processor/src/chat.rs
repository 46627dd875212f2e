//! Chat messages, the chat template (minijinja, configured like transformers' Jinja environment) and the
//! tokenization rule that keeps user text from ever becoming special tokens.
//!
//! Rule (RELIABILITY 8): render the template with each user text replaced by a unique sentinel, so the spans
//! of user text in the rendered string are known; split the rendered string only at special tokens that lie
//! outside user spans (the template's own markers), map those to their ids, and tokenize each run between them
//! as a whole with special-token matching off. On clean user text this equals transformers' tokenization of
//! the rendered string.

use crate::limits::{MAX_RENDERED_BYTES, TEMPLATE_FUEL};
use crate::ProcessorError;
use minijinja::syntax::SyntaxConfig;
use minijinja::value::Value;
use minijinja::{Environment, ErrorKind};
use tokenizers::Tokenizer;

/// One chat message: a role ("system", "user", "assistant") and its content items in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: Vec<Content>,
}

/// A content item: an image or video placeholder (the pixels travel separately, in order) or text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    Image,
    Video,
    Text(String),
}

impl Message {
    pub fn new(role: &str, content: Vec<Content>) -> Message {
        Message {
            role: role.to_string(),
            content,
        }
    }

    /// A message holding one text item.
    pub fn text(role: &str, text: &str) -> Message {
        Message::new(role, vec![Content::Text(text.to_string())])
    }
}

/// The Qwen3-VL Instruct template as distributed with the checkpoints (spec 7.1).
pub const BUILTIN_TEMPLATE: &str = include_str!("chat_template.qwen3vl-instruct.jinja");

#[derive(Clone)]
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template came from (`chat_template.jinja`, ..., `the built-in template`), for errors.
    origin: String,
}

impl ChatTemplate {
    /// Compile a template with transformers' settings: trim_blocks, lstrip_blocks, `raise_exception`.
    /// Every render runs on a fuel budget ([`TEMPLATE_FUEL`]), so a template cannot loop for minutes.
    pub(crate) fn new(source: String, origin: &str) -> Result<ChatTemplate, ProcessorError> {
        let origin = origin.to_string();
        let terr = |msg: String| ProcessorError::Template(format!("{origin}: {msg}"));
        let mut env = Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| terr(e.to_string()))?;
        env.set_syntax(syntax);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned("chat", source)
            .map_err(|e| terr(format!("does not compile: {e:#}")))?;
        Ok(ChatTemplate { env, origin })
    }

    /// Where the template came from, for messages.
    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    fn err(&self, msg: impl std::fmt::Display) -> ProcessorError {
        ProcessorError::Template(format!("{}: {msg}", self.origin))
    }

    /// Render `messages`, with user texts replaced by `texts` (same count and order as the text items).
    fn render_with(
        &self,
        messages: &[Message],
        texts: &[String],
        add_generation_prompt: bool,
    ) -> Result<String, ProcessorError> {
        let mut it = texts.iter();
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| {
                let content: Vec<Value> = m
                    .content
                    .iter()
                    .map(|c| match c {
                        Content::Image => Value::from_pairs([("type", Value::from("image"))]),
                        Content::Video => Value::from_pairs([("type", Value::from("video"))]),
                        Content::Text(_) => Value::from_pairs([
                            ("type", Value::from("text")),
                            (
                                "text",
                                Value::from(it.next().map(String::as_str).unwrap_or("")),
                            ),
                        ]),
                    })
                    .collect();
                Value::from_pairs([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(content)),
                ])
            })
            .collect();
        let tmpl = self.env.get_template("chat").map_err(|e| self.err(e))?;
        let ctx = Value::from_pairs([
            ("messages", Value::from(msgs)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("bos_token", Value::from("<|endoftext|>")),
            ("eos_token", Value::from("<|im_end|>")),
            ("pad_token", Value::from("<|endoftext|>")),
        ]);
        let out = tmpl.render(ctx).map_err(|e| {
            if e.kind() == ErrorKind::OutOfFuel {
                self.err(format!(
                    "rendering stopped: the template ran past its budget of {TEMPLATE_FUEL} steps (limits::TEMPLATE_FUEL)"
                ))
            } else {
                self.err(format!("rendering failed: {e:#}"))
            }
        })?;
        if out.len() > MAX_RENDERED_BYTES {
            return Err(self.err(format!(
                "the rendered prompt is {} bytes, over the limit of {MAX_RENDERED_BYTES} (limits::MAX_RENDERED_BYTES)",
                out.len()
            )));
        }
        Ok(out)
    }

    /// The rendered prompt text.
    pub(crate) fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ProcessorError> {
        self.render_with(messages, &user_texts(messages), add_generation_prompt)
    }

    /// The rendered prompt and the byte spans of user text in it.
    pub(crate) fn render_with_spans(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<(String, Vec<(usize, usize)>), ProcessorError> {
        let texts = user_texts(messages);
        // A sentinel character that occurs in no user text.
        let mark = [
            '\u{10FFFD}',
            '\u{10FFFC}',
            '\u{10FFFB}',
            '\u{F8FF}',
            '\u{E000}',
        ]
        .into_iter()
        .find(|m| texts.iter().all(|t| !t.contains(*m)))
        .ok_or_else(|| self.err("user text contains every sentinel candidate"))?;
        let sentinels: Vec<String> = (0..texts.len())
            .map(|i| format!("{mark}{i}{mark}"))
            .collect();
        let with = self.render_with(messages, &sentinels, add_generation_prompt)?;
        // Substitute the sentinels back, recording where each text lands.
        let mut out =
            String::with_capacity(with.len() + texts.iter().map(String::len).sum::<usize>());
        let mut spans = Vec::new();
        let mut rest = with.as_str();
        while let Some(a) = rest.find(mark) {
            out.push_str(&rest[..a]);
            let after = &rest[a + mark.len_utf8()..];
            let b = after
                .find(mark)
                .ok_or_else(|| self.err("the template altered a user text (unpaired sentinel)"))?;
            let idx: usize = after[..b]
                .parse()
                .map_err(|_| self.err("the template altered a user text (bad sentinel)"))?;
            let t = texts
                .get(idx)
                .ok_or_else(|| self.err("the template altered a user text (sentinel index)"))?;
            spans.push((out.len(), out.len() + t.len()));
            out.push_str(t);
            rest = &after[b + mark.len_utf8()..];
        }
        out.push_str(rest);
        Ok((out, spans))
    }
}

fn user_texts(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .flat_map(|m| m.content.iter())
        .filter_map(|c| match c {
            Content::Text(t) => Some(t.clone()),
            Content::Image | Content::Video => None,
        })
        .collect()
}

/// Tokenize `rendered`: special tokens outside `user_spans` become their ids; each run between them is
/// encoded with special-token matching off (`tokenizer` must have `encode_special_tokens` set).
pub(crate) fn tokenize_rendered(
    tokenizer: &Tokenizer,
    specials: &[(String, u32)],
    rendered: &str,
    user_spans: &[(usize, usize)],
) -> Result<Vec<u32>, ProcessorError> {
    // 1. Template special tokens: leftmost, then longest, not overlapping user text.
    let mut hits: Vec<(usize, usize, u32)> = Vec::new();
    for (s, id) in specials {
        for (at, _) in rendered.match_indices(s.as_str()) {
            hits.push((at, at + s.len(), *id));
        }
    }
    hits.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut cuts = Vec::new();
    let mut end = 0;
    for h in hits {
        if h.0 < end || user_spans.iter().any(|&(a, b)| a < h.1 && h.0 < b) {
            continue;
        }
        end = h.1;
        cuts.push(h);
    }
    // 2. Encode the runs between them.
    let mut ids = Vec::new();
    let mut last = 0;
    let encode = |text: &str, ids: &mut Vec<u32>| -> Result<(), ProcessorError> {
        if text.is_empty() {
            return Ok(());
        }
        let enc = tokenizer
            .encode(text, false)
            .map_err(|e| ProcessorError::Tokenizer(e.to_string()))?;
        ids.extend_from_slice(enc.get_ids());
        Ok(())
    };
    for (a, b, id) in cuts {
        encode(&rendered[last..a], &mut ids)?;
        ids.push(id);
        last = b;
    }
    encode(&rendered[last..], &mut ids)?;
    Ok(ids)
}
