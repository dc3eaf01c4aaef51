//! [`TokenRatio`]: how many tokens the provider bills for each one this worker counts. Servers
//! count their own way (another tokenizer, or characters over four); a reservation in the
//! worker's count would leave the provider's budget short by the difference, so reservations
//! are scaled by the ratio the answers' `usage` showed.

use std::sync::Mutex;

/// The billed-to-counted ratio, a moving average of the answers so far.
#[derive(Debug)]
pub struct TokenRatio(Mutex<f64>);

impl Default for TokenRatio {
    fn default() -> Self {
        Self(Mutex::new(1.0))
    }
}

impl TokenRatio {
    /// Weight of each new answer.
    const WEIGHT: f64 = 0.3;
    /// No answer moves the ratio outside this range (a provider billing a fixed minimum for
    /// empty inputs must not make every later reservation huge).
    const RANGE: (f64, f64) = (0.25, 4.0);

    fn get(&self) -> f64 {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `counted` tokens as the provider will bill them, rounded up.
    pub fn scale(&self, counted: u64) -> u64 {
        (counted as f64 * self.get()).ceil() as u64
    }

    /// One answer: `counted` by this worker, `billed` by the provider.
    pub fn learn(&self, counted: u64, billed: u64) {
        if counted == 0 {
            return;
        }
        let sample = (billed as f64 / counted as f64).clamp(Self::RANGE.0, Self::RANGE.1);
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *r += Self::WEIGHT * (sample - *r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_follow_what_the_provider_bills() {
        let r = TokenRatio::default();
        assert_eq!(r.scale(100), 100);
        for _ in 0..30 {
            r.learn(100, 130);
        }
        assert_eq!(r.scale(100), 130);
        // One odd answer moves it a little, never past the range.
        r.learn(1, 1_000);
        assert!((r.scale(100) as f64 - (130.0 + 0.3 * 270.0)).abs() <= 1.0, "{}", r.scale(100));
        r.learn(0, 50);
        assert!(r.scale(100) < 400);
    }
}
