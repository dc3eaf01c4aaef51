//! The `hash` provider, for development and tests only: deterministic, L2-normalised
//! vectors computed from the text with no model and no network.
//!
//! Each word (and each pair of neighbouring words) is hashed to a dimension and a sign
//! (feature hashing), so texts that share words get similar vectors: enough for
//! `embq search` to show sensible neighbours, but not a semantic model.

use std::time::Duration;

use async_trait::async_trait;

use super::ProviderKind;
use super::{Embedded, Provider, ProviderError};
use crate::vector::l2_normalize;

/// Deterministic feature-hashing embeddings.
#[derive(Debug, Clone)]
pub struct HashProvider {
    model: String,
    dims: usize,
    delay: Duration,
}

/// FNV-1a, 64 bit: stable across platforms and Rust versions, unlike `DefaultHasher`.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    fnv1a_extend(0xcbf2_9ce4_8422_2325u64 ^ seed, bytes)
}

/// Continues an FNV-1a hash over more bytes, so a word pair hashes without joining the words.
fn fnv1a_extend(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl HashProvider {
    /// A provider producing `dims`-dimensional vectors under the given model name.
    pub fn new(model: &str, dims: usize) -> Self {
        Self { model: model.to_string(), dims: dims.max(1), delay: Duration::ZERO }
    }

    /// Adds an artificial latency per call, to test what happens mid-batch.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The vector of one text.
    pub fn vector(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0.0f32; self.dims];
        let lower = text.to_lowercase();
        let mut prev: Option<&str> = None;
        let mut any = false;
        for word in lower.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
            self.add(&mut v, fnv1a(0, word.as_bytes()), 1.0);
            if let Some(p) = prev {
                // The hash of "{p} {word}".
                let pair = fnv1a_extend(fnv1a_extend(fnv1a(1, p.as_bytes()), b" "), word.as_bytes());
                self.add(&mut v, pair, 0.5);
            }
            prev = Some(word);
            any = true;
        }
        if !any {
            // Punctuation-only text still gets a stable, non-zero vector.
            self.add(&mut v, fnv1a(2, text.as_bytes()), 1.0);
        }
        l2_normalize(&mut v);
        v
    }

    fn add(&self, v: &mut [f32], h: u64, weight: f32) {
        let idx = (h % self.dims as u64) as usize;
        let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
        v[idx] += sign * weight;
    }
}

#[async_trait]
impl Provider for HashProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Hash
    }
    fn model(&self) -> &str {
        &self.model
    }
    fn dimensions(&self) -> usize {
        self.dims
    }
    fn max_inputs(&self) -> usize {
        4096
    }
    async fn embed(&self, texts: &[&str]) -> Result<Embedded, ProviderError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Ok(Embedded { vectors: texts.iter().map(|t| self.vector(t)).collect(), tokens: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector::cosine;

    #[test]
    fn vectors_are_deterministic_and_unit_length() {
        let p = HashProvider::new("hash-v1", 384);
        let a = p.vector("Coffee at Blue Bottle, $4.50");
        assert_eq!(a, p.vector("Coffee at Blue Bottle, $4.50"));
        assert_eq!(a.len(), 384);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert_eq!(p.vector("!!!").len(), 384);
        assert!(p.vector("!!!").iter().any(|x| *x != 0.0));
    }

    #[test]
    fn shared_words_mean_closer_vectors() {
        let p = HashProvider::new("hash-v1", 384);
        let q = p.vector("grocery store receipt");
        let near = p.vector("receipt from the grocery store");
        let far = p.vector("airline ticket to Lisbon");
        assert!(cosine(&q, &near) > cosine(&q, &far) + 0.3);
    }

    #[tokio::test]
    async fn embed_returns_one_vector_per_text_in_order() {
        let p = HashProvider::new("hash-v1", 16);
        let out = p.embed(&["a", "b"]).await.unwrap();
        assert_eq!(out.vectors, vec![p.vector("a"), p.vector("b")]);
    }
}
