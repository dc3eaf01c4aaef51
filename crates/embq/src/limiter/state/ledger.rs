//! The rolling ledger of what a budget granted: every grant and every token billed beyond its
//! reservation, with its time, for [`Rates::WINDOW_SECONDS`]; and when each grant's answer
//! came back, which tells what a provider's report may not have counted yet.

use std::collections::VecDeque;

use super::Rates;

/// One grant or correction in the window.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    at: f64,
    /// The grant's id; 0 for a correction (tokens billed beyond a reservation).
    id: u64,
    requests: f64,
    tokens: f64,
    /// When its answer came back; `None` while in flight.
    answered: Option<f64>,
}

impl Entry {
    fn in_flight(&self) -> bool {
        self.id != 0 && self.answered.is_none()
    }
}

/// What was granted in the last window, oldest first, the sums, and what is in flight.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Ledger {
    entries: VecDeque<Entry>,
    /// Requests and tokens granted in the window.
    pub(super) requests: f64,
    pub(super) tokens: f64,
    /// Requests and tokens of the grants in flight.
    pub(super) in_flight: (f64, f64),
}

impl Ledger {
    /// Forgets what left the window by `now`. Sums of whole numbers stay exact in f64. A grant
    /// never answered (its worker died) stops counting as in flight when it leaves the window.
    pub(super) fn prune(&mut self, now: f64) {
        while let Some(&e) = self.entries.front() {
            if e.at + Rates::WINDOW_SECONDS > now {
                break;
            }
            self.entries.pop_front();
            self.requests -= e.requests;
            self.tokens -= e.tokens;
            if e.in_flight() {
                self.in_flight.0 -= e.requests;
                self.in_flight.1 -= e.tokens;
            }
        }
        if self.entries.is_empty() {
            (self.requests, self.tokens, self.in_flight) = (0.0, 0.0, (0.0, 0.0));
        }
    }

    /// Records grant `id`, in flight.
    pub(super) fn grant(&mut self, at: f64, id: u64, requests: f64, tokens: f64) {
        self.entries.push_back(Entry { at, id, requests, tokens, answered: None });
        self.requests += requests;
        self.tokens += tokens;
        self.in_flight.0 += requests;
        self.in_flight.1 += tokens;
    }

    /// Records tokens billed beyond a reservation.
    pub(super) fn billed(&mut self, at: f64, tokens: f64) {
        self.entries.push_back(Entry { at, id: 0, requests: 0.0, tokens, answered: None });
        self.tokens += tokens;
    }

    /// What a report answering grant `id` may not have counted, (requests, tokens): every
    /// other grant whose answer came back after `id` was granted, or has not yet. A grant that
    /// reached the provider after `id` did was in flight when `id` was granted, so it is among
    /// them, however the network ordered the requests. (Grants counted before `id` may be among
    /// them too: the budget then errs low, until the next report.)
    pub(super) fn uncounted_by(&self, id: u64) -> (f64, f64) {
        let since = self.find(id).map_or(f64::NEG_INFINITY, |i| self.entries[i].at);
        self.entries
            .iter()
            .filter(|e| e.id != 0 && e.id != id && e.answered.is_none_or(|t| t > since))
            .fold((0.0, 0.0), |(r, t), e| (r + e.requests, t + e.tokens))
    }

    /// Grant `id` was answered at `now`: no longer in flight.
    pub(super) fn settle(&mut self, id: u64, now: f64) {
        if let Some(i) = self.find(id) {
            let e = &mut self.entries[i];
            if e.answered.is_none() {
                e.answered = Some(now);
                self.in_flight.0 -= e.requests;
                self.in_flight.1 -= e.tokens;
            }
        }
    }

    /// The entry of grant `id`: answers come soon after their grants, so look from the back.
    fn find(&self, id: u64) -> Option<usize> {
        if id == 0 {
            return None;
        }
        self.entries.iter().rposition(|e| e.id == id)
    }

    /// Seconds from `now` until `over` of one kind (requests, or tokens) has left the window.
    pub(super) fn wait_until_freed(&self, now: f64, over: f64, tokens: bool) -> f64 {
        if over <= 0.0 {
            return 0.0;
        }
        let mut freed = 0.0;
        for e in &self.entries {
            freed += if tokens { e.tokens } else { e.requests };
            if freed >= over {
                return (e.at + Rates::WINDOW_SECONDS - now).max(0.0);
            }
        }
        Rates::WINDOW_SECONDS
    }
}
