//! Token counting before a request is sent: the model's own tokenizer where one is
//! available (tiktoken for OpenAI models, the model's `tokenizer.json` for `local`), a
//! documented estimate elsewhere; and what to do with an input longer than the model accepts.
//!
//! Counts feed the batch planner (never above a request's token cap) and the limiter's
//! token reservation, which the response's `usage` later corrects.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use tiktoken_rs::CoreBPE;

/// What happens to an input longer than the model accepts (`OVERLONG_INPUT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OverlongInput {
    /// Cut it to the model's limit (counted in `embedding_overlong_inputs_total`).
    #[default]
    Truncate,
    /// Dead-letter the job with the reason.
    Reject,
}

impl OverlongInput {
    /// Parses `truncate` or `reject`.
    pub fn parse(v: &str) -> Result<Self, String> {
        match v.trim().to_ascii_lowercase().as_str() {
            "truncate" => Ok(Self::Truncate),
            "reject" => Ok(Self::Reject),
            _ => Err("must be truncate or reject".into()),
        }
    }
}

/// A tokenizer supplied by a provider (the local model's own).
pub trait CountTokens: Send + Sync {
    /// Tokens the model sees for `text`, special tokens included.
    fn count(&self, text: &str) -> usize;
    /// The longest prefix of `text` of at most `max` tokens.
    fn truncate(&self, text: &str, max: usize) -> String;
}

/// How one provider counts tokens.
#[derive(Clone)]
pub enum TokenCounter {
    /// OpenAI's byte-pair encoding (tiktoken tables compiled into the binary).
    Bpe(BpeTable),
    /// The model's own tokenizer.
    Model(Arc<dyn CountTokens>),
    /// No tokenizer: see [`estimate`].
    Estimate,
}

impl fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bpe(_) => "TokenCounter::Bpe",
            Self::Model(_) => "TokenCounter::Model",
            Self::Estimate => "TokenCounter::Estimate",
        })
    }
}

/// A tiktoken table, parsed once per process on first use.
#[derive(Clone, Copy)]
pub struct BpeTable(tiktoken_rs::tokenizer::Tokenizer);

impl BpeTable {
    /// The parsed table (blocks while another thread is still parsing it).
    fn get(self) -> Option<&'static CoreBPE> {
        tiktoken_rs::bpe_for_tokenizer(self.0).ok()
    }
}

impl TokenCounter {
    /// The tiktoken encoding of an OpenAI model; unknown names (fine-tunes, future models)
    /// get cl100k_base, the encoding of every current embedding model.
    pub fn for_openai_model(model: &str) -> Self {
        let tokenizer =
            tiktoken_rs::tokenizer::get_tokenizer(model).unwrap_or(tiktoken_rs::tokenizer::Tokenizer::Cl100kBase);
        // Parsing the 100k-token table takes ~80 ms: do it beside start-up, not before ready.
        std::thread::spawn(move || BpeTable(tokenizer).get());
        Self::Bpe(BpeTable(tokenizer))
    }

    /// Tokens in `text`.
    pub fn count(&self, text: &str) -> usize {
        match self {
            Self::Bpe(t) => t.get().map_or_else(|| estimate(text), |bpe| bpe.count_ordinary(text)),
            Self::Model(m) => m.count(text),
            Self::Estimate => estimate(text),
        }
    }

    /// The longest prefix of `text` that has at most `max` tokens.
    pub fn truncate(&self, text: &str, max: usize) -> String {
        match self {
            Self::Bpe(t) => {
                let Some(bpe) = t.get() else {
                    return truncate_estimate(text, max);
                };
                let ids = bpe.encode_ordinary(text);
                if ids.len() <= max {
                    return text.to_string();
                }
                // A cut can fall inside a multi-byte character: drop tokens until it decodes.
                let mut end = max;
                loop {
                    if let Ok(s) = bpe.decode(&ids[..end]) {
                        return s;
                    }
                    if end == 0 {
                        return String::new();
                    }
                    end -= 1;
                }
            }
            Self::Model(m) => m.truncate(text, max),
            Self::Estimate => truncate_estimate(text, max),
        }
    }
}

/// The longest prefix of `text` whose [`estimate`] is at most `max`.
fn truncate_estimate(text: &str, max: usize) -> String {
    if estimate(text) <= max {
        return text.to_string();
    }
    let mut cost = 0.0f64;
    for (i, c) in text.char_indices() {
        cost += char_cost(c);
        if cost.ceil() as usize > max {
            return text[..i].to_string();
        }
    }
    text.to_string()
}

fn char_cost(c: char) -> f64 {
    if c.is_ascii() {
        0.25
    } else {
        1.0
    }
}

/// The estimate used where no tokenizer is available (Gemini, unknown OpenAI-compatible
/// models): a quarter token per ASCII byte (English averages about four characters a
/// token) and one token per other character (CJK and most non-Latin scripts take one or
/// more each), rounded up, at least one. It errs high on purpose: the limiter reserves by
/// it, and reserving too much only delays a request, while too little risks a 429.
pub fn estimate(text: &str) -> usize {
    let cost: f64 = text.chars().map(char_cost).sum();
    (cost.ceil() as usize).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_counts_match_the_published_tokenizer() {
        // Counts from OpenAI's tiktoken (cl100k_base), the tokenizer of text-embedding-3-*.
        let c = TokenCounter::for_openai_model("text-embedding-3-small");
        assert!(matches!(c, TokenCounter::Bpe(_)));
        for (text, n) in [
            ("hello world", 2),
            ("Hello, world!", 4),
            ("How's it going?", 5),
            ("rust is fast", 3),
            ("tiktoken is great!", 6),
            ("", 0),
        ] {
            assert_eq!(c.count(text), n, "{text:?}");
        }
        // Unknown models fall back to cl100k_base rather than to an estimate.
        assert_eq!(TokenCounter::for_openai_model("my-fine-tune").count("hello world"), 2);
    }

    #[test]
    fn truncation_keeps_a_prefix_within_the_limit() {
        let c = TokenCounter::for_openai_model("text-embedding-3-small");
        let long = "receipt line item ".repeat(100);
        let cut = c.truncate(&long, 10);
        assert!(c.count(&cut) <= 10);
        assert!(long.starts_with(&cut) && !cut.is_empty());
        assert_eq!(c.truncate("short", 10), "short");
        let cjk = "東京の領収書".repeat(20);
        let cut = c.truncate(&cjk, 7);
        assert!(c.count(&cut) <= 7 && cjk.starts_with(&cut));
    }

    #[test]
    fn estimate_is_documented_and_truncation_agrees_with_it() {
        assert_eq!(estimate("abcd"), 1);
        assert_eq!(estimate("abcde"), 2);
        assert_eq!(estimate(""), 1);
        assert_eq!(estimate("東京"), 2);
        let e = TokenCounter::Estimate;
        let cut = e.truncate(&"word ".repeat(100), 10);
        assert!(estimate(&cut) <= 10 && cut.len() == 40, "{}", cut.len());
    }

    #[test]
    fn overlong_policy_parses() {
        assert_eq!(OverlongInput::parse("Reject"), Ok(OverlongInput::Reject));
        assert_eq!(OverlongInput::parse("truncate"), Ok(OverlongInput::Truncate));
        assert!(OverlongInput::parse("drop").is_err());
    }
}
