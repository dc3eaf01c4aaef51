//! What a worker holds in flight, in bytes: claimed texts, their vectors, the provider's
//! answer and the encoded statement that stores them. Claims are sized so the total stays
//! within a share of `MEMORY_LIMIT_MB`, whatever `BATCH_SIZE`, `MAX_CONCURRENT_JOBS` or
//! `ENABLE_BATCH_OPTIMIZATION` ask for; counts alone cannot do that, since a job at 1,536
//! dimensions holds some fifty times what one at 384 holds with a short text.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::queue::MAX_TEXT_BYTES;

/// The share of `MEMORY_LIMIT_MB` that jobs in flight may hold. The rest is the process
/// itself (binary, pools, a local model's weights and activations) and the allocator's
/// slack: freed memory is not always returned to the system at once.
const SHARE_DIVISOR: u64 = 4;

/// Bytes per vector dimension while a job is in flight: the `f32` vector (4), the provider's
/// JSON answer it was parsed from (a float prints as up to ~20 characters) and the encoded
/// statement that stores it (up to 8 with `real[]`'s per-element length).
const BYTES_PER_DIMENSION: u64 = 32;

/// Copies of a job's text alive at once: the claimed row, a truncated copy or the request
/// body, and the tokenizer's view of it.
const TEXT_COPIES: u64 = 3;

/// The job's row apart from its text and vector: ids, lease, metadata, outcome.
const JOB_OVERHEAD: u64 = 512;

/// The least text length assumed before the first claim says otherwise.
const FIRST_TEXT_GUESS: u64 = 2048;

/// Bytes a token takes in text, roughly, for the first guess from the provider's input cap.
const BYTES_PER_TOKEN: u64 = 4;

/// The in-flight byte budget of one worker and what is held against it.
#[derive(Debug)]
pub struct InflightBytes {
    limit: u64,
    per_job_fixed: u64,
    used: AtomicU64,
    peak: AtomicU64,
    /// The text length claims are sized by: the larger of the last claim's mean and a
    /// moving average, so a run of long texts is believed at once and forgotten slowly.
    text_guess: AtomicU64,
}

impl InflightBytes {
    /// A budget of a quarter of `memory_limit` for jobs of `dimensions`-long vectors. Until
    /// the first claim is seen, texts are assumed as long as `max_tokens_per_input` allows:
    /// a first claim of unknown texts errs on the small side.
    pub fn new(memory_limit: u64, dimensions: usize, max_tokens_per_input: usize) -> Self {
        let longest = (max_tokens_per_input as u64).saturating_mul(BYTES_PER_TOKEN).min(MAX_TEXT_BYTES as u64);
        let first_guess = FIRST_TEXT_GUESS.max(longest);
        Self {
            limit: (memory_limit / SHARE_DIVISOR).max(1),
            per_job_fixed: JOB_OVERHEAD + dimensions as u64 * BYTES_PER_DIMENSION,
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            text_guess: AtomicU64::new(first_guess),
        }
    }

    /// The budget in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes not held now.
    pub fn free(&self) -> u64 {
        self.limit.saturating_sub(self.used())
    }

    /// The most bytes held at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// What one job with a text of `text_len` bytes holds while in flight.
    pub fn job_bytes(&self, text_len: usize) -> u64 {
        self.per_job_fixed + TEXT_COPIES * text_len as u64
    }

    /// How many more jobs of the expected size fit; at least one while nothing is held, so a
    /// budget smaller than a single job slows the worker down but never stops it.
    pub fn room(&self) -> usize {
        let free = self.free();
        let each = self.job_bytes(self.text_guess.load(Ordering::Relaxed) as usize);
        let n = (free / each.max(1)) as usize;
        if n == 0 && self.used() == 0 {
            1
        } else {
            n
        }
    }

    /// Learns the text length of a claim's jobs (their mean, in bytes).
    pub fn observe_texts(&self, total_len: usize, jobs: usize) {
        if jobs == 0 {
            return;
        }
        let mean = (total_len / jobs) as u64;
        let old = self.text_guess.load(Ordering::Relaxed);
        let blended = (old + mean) / 2;
        self.text_guess.store(mean.max(blended), Ordering::Relaxed);
    }

    /// Holds `bytes` until the returned hold is dropped. Always granted: the jobs are
    /// already claimed, and claims were sized by [`InflightBytes::room`].
    pub fn hold(self: &Arc<Self>, bytes: u64) -> BytesHeld {
        let now = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
        BytesHeld { budget: self.clone(), bytes }
    }
}

/// Bytes held by one batch; given back when dropped.
#[derive(Debug)]
pub struct BytesHeld {
    budget: Arc<InflightBytes>,
    bytes: u64,
}

impl Drop for BytesHeld {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_budget_is_a_quarter_of_the_memory_limit_and_sizes_claims_by_dimensions() {
        let small = Arc::new(InflightBytes::new(128 * MIB, 1536, 256));
        assert_eq!(small.limit(), 32 * MIB);
        let job = small.job_bytes(2048);
        assert_eq!(small.room() as u64, 32 * MIB / job);
        // The same limit holds ~3x as many 384-dimension jobs (with 2 KiB texts).
        let narrow = InflightBytes::new(128 * MIB, 384, 256);
        assert!(narrow.room() > 2 * small.room(), "{} vs {}", narrow.room(), small.room());
    }

    #[test]
    fn before_any_claim_texts_are_assumed_as_long_as_the_provider_accepts() {
        // OpenAI takes 8,191 tokens an input: the first claim assumes ~32 KiB texts.
        let openai = InflightBytes::new(1024 * MIB, 1536, 8191);
        let local = InflightBytes::new(1024 * MIB, 1536, 256);
        assert!(openai.room() * 2 < local.room(), "{} vs {}", openai.room(), local.room());
        // A provider without a per-input cap is assumed at the longest text accepted.
        let uncapped = InflightBytes::new(1024 * MIB, 1536, usize::MAX);
        assert!(uncapped.room() >= 1 && uncapped.room() < openai.room());
        // One claim of short texts brings it most of the way down.
        openai.observe_texts(100 * 1000, 1000);
        assert!(openai.room() > local.room() / 2);
    }

    #[test]
    fn held_bytes_shrink_the_room_and_come_back_when_dropped() {
        let b = Arc::new(InflightBytes::new(64 * MIB, 384, 256));
        let before = b.room();
        let held = b.hold(8 * MIB);
        assert!(b.room() < before);
        assert_eq!(b.used(), 8 * MIB);
        drop(held);
        assert_eq!(b.used(), 0);
        assert_eq!(b.peak(), 8 * MIB);
        assert_eq!(b.room(), before);
    }

    #[test]
    fn a_full_budget_has_no_room_but_an_empty_one_always_takes_one_job() {
        let b = Arc::new(InflightBytes::new(4 * MIB, 1536, 256));
        let held = b.hold(b.limit());
        assert_eq!(b.room(), 0);
        drop(held);
        // One job bigger than the whole budget still gets through when nothing else is held.
        b.observe_texts(64 << 20, 1);
        assert_eq!(b.room(), 1);
    }

    #[test]
    fn long_texts_are_believed_at_once_and_forgotten_slowly() {
        let b = InflightBytes::new(256 * MIB, 384, 256);
        let short = b.room();
        b.observe_texts(100_000 * 10, 10);
        let long = b.room();
        assert!(long * 10 < short, "{long} vs {short}");
        b.observe_texts(10 * 100, 10);
        let after_one_short_claim = b.room();
        assert!(after_one_short_claim < short / 2, "{after_one_short_claim} vs {short}");
        for _ in 0..30 {
            b.observe_texts(10 * 100, 10);
        }
        assert!(b.room() > after_one_short_claim);
    }
}
