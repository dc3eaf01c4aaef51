//! The local model's tokenizer as embq counts, truncates and feeds tokens with it.

use tokenizers::Tokenizer;

use super::local::MAX_TOKENS;
use crate::tokens::CountTokens;

/// The model's own tokenizer with padding and truncation switched off: counts are exact,
/// and the model path pads and truncates explicitly.
pub struct LocalTokens(pub(super) Tokenizer);

impl LocalTokens {
    fn ids(&self, text: &str) -> Option<tokenizers::Encoding> {
        self.0.encode(text, true).ok()
    }

    /// Token ids of `text` as the model sees them: `[CLS] … [SEP]`, at most [`MAX_TOKENS`].
    pub fn model_ids(&self, text: &str) -> Vec<u32> {
        let Some(enc) = self.ids(text) else { return vec![] };
        let ids = enc.get_ids();
        if ids.len() <= MAX_TOKENS {
            return ids.to_vec();
        }
        // Keep [CLS] and the first 254 word pieces, then the closing [SEP].
        let mut out = ids[..MAX_TOKENS - 1].to_vec();
        out.push(ids[ids.len() - 1]);
        out
    }
}

impl CountTokens for LocalTokens {
    fn count(&self, text: &str) -> usize {
        self.ids(text).map(|e| e.len()).unwrap_or_else(|| crate::tokens::estimate(text))
    }

    fn truncate(&self, text: &str, max: usize) -> String {
        let Some(enc) = self.ids(text) else { return text.to_string() };
        if enc.len() <= max || max < 3 {
            return text.to_string();
        }
        // Offsets are byte ranges into `text`; index 0 is [CLS], so the last kept word piece
        // is index max - 2 (room for [SEP]).
        let end = enc.get_offsets().get(max - 2).map(|o| o.1).unwrap_or(text.len());
        let mut end = end.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_string()
    }
}
