//! The leases this worker still holds: heartbeats extend exactly these.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Lease tokens of the batches this worker is still working on, counted per batch.
///
/// A batch whose results could not be recorded drops out, so its jobs' leases lapse and
/// another worker rescues them, instead of this worker's heartbeats keeping them forever.
#[derive(Debug, Default)]
pub(super) struct LiveLeases(Mutex<HashMap<String, usize>>);

impl LiveLeases {
    pub(super) fn hold(self: &Arc<Self>, token: &str) -> LiveLease {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()).entry(token.to_string()).or_default() += 1;
        LiveLease { set: self.clone(), token: token.to_string() }
    }

    pub(super) fn tokens(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }
}

/// One batch's hold on its lease; released when dropped.
#[derive(Debug)]
pub(super) struct LiveLease {
    set: Arc<LiveLeases>,
    token: String,
}

impl Drop for LiveLease {
    fn drop(&mut self) {
        let mut m = self.set.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.token) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.token);
            }
        }
    }
}
