//! Memory accounting: RSS from the OS and live heap bytes from a counting allocator.
//!
//! The allocator wraps the system allocator with two relaxed atomic updates per call,
//! which is what `heapUsed`/`heapTotal` in `worker_memory_usage_bytes` report. The binary
//! installs it (`#[global_allocator]` in `main.rs`); a program using the library chooses its
//! own allocator, and then the heap figures read 0.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting live bytes and their peak.
pub struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`; only counters are added.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grow(new_size);
        }
        p
    }
}

fn grow(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

/// Bytes currently allocated on the heap.
pub fn heap_used() -> u64 {
    LIVE.load(Ordering::Relaxed) as u64
}

/// The most bytes ever allocated at once.
pub fn heap_peak() -> u64 {
    PEAK.load(Ordering::Relaxed) as u64
}

/// Resident set size from `/proc/self/statm`, or `None` off Linux.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// Gives the allocator's free pages back to the system, where the platform allows it.
///
/// glibc keeps freed memory in its arenas; after a large batch an idle worker's RSS can
/// stay above the memory guard with nothing left to finish, and then it would never claim
/// again.
pub fn return_free_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas; 0 keeps no padding at the top.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn page_size() -> u64 {
    // Every Linux platform embq targets uses 4 KiB pages for statm accounting.
    4096
}

/// Memory pressure with hysteresis: over at 90 % of the limit, clear again below 80 %.
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    limit: u64,
    over: bool,
}

impl Guard {
    /// A guard for `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self { limit, over: false }
    }
    /// Judges a reading taken with nothing in flight: no hysteresis, since nothing the
    /// worker holds can bring it down further.
    pub fn judge_idle(&mut self, rss: u64) -> bool {
        self.over = rss >= self.limit / 10 * 9;
        self.over
    }
    /// Feeds a reading; returns true while the worker must not claim.
    pub fn update(&mut self, rss: u64) -> bool {
        let high = self.limit / 10 * 9;
        let low = self.limit / 10 * 8;
        if rss >= high {
            self.over = true;
        } else if rss < low {
            self.over = false;
        }
        self.over
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_trips_at_ninety_percent_and_clears_below_eighty() {
        let mut g = Guard::new(1000);
        assert!(!g.update(899));
        assert!(g.update(900));
        assert!(g.update(850));
        assert!(!g.update(799));
    }

    #[test]
    fn an_idle_reading_clears_the_guard_without_waiting_for_eighty_percent() {
        let mut g = Guard::new(1000);
        assert!(g.update(950));
        assert!(g.update(850), "hysteresis holds while work is in flight");
        assert!(!g.judge_idle(850), "with nothing in flight, under 90 % is enough");
        assert!(g.judge_idle(900));
    }

    // The unit-test binary counts like the embq binary does.
    #[global_allocator]
    static COUNTING: CountingAlloc = CountingAlloc;

    #[test]
    fn counters_track_allocations() {
        let before = heap_peak();
        let v = vec![0u8; 8 << 20];
        assert!(heap_used() >= v.len() as u64);
        assert!(heap_peak() >= before.max(v.len() as u64));
        drop(v);
        assert!(rss_bytes().unwrap_or(1) > 0);
    }
}
