//! The demo's progress display on stderr: a bar (done/total, jobs/s, ETA) on a terminal, and
//! a plain line every few seconds otherwise, so logs and CI output stay readable.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::worker::Counters;

/// How often the plain line is printed when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(2);
/// How often the bar reads the counters.
const BAR_TICK: Duration = Duration::from_millis(100);

/// A running progress display; `finish` ends it.
pub struct Progress {
    task: tokio::task::JoinHandle<()>,
    bar: Option<indicatif::ProgressBar>,
    counters: Arc<Counters>,
    total: u64,
    started: Instant,
}

impl Progress {
    /// Starts showing the progress of `total` jobs as `counters` advance.
    pub fn start(counters: Arc<Counters>, total: u64, terminal: bool) -> Self {
        let started = Instant::now();
        let bar = terminal.then(|| new_bar(total));
        let task = match bar.clone() {
            Some(b) => {
                let c = counters.clone();
                tokio::spawn(async move {
                    loop {
                        let done = done(&c);
                        b.set_length(total.max(done));
                        b.set_position(done);
                        tokio::time::sleep(BAR_TICK).await;
                    }
                })
            }
            None => {
                let c = counters.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(LINE_EVERY).await;
                        eprintln!("{}", line(done(&c), total, started.elapsed()));
                    }
                })
            }
        };
        Self { task, bar, counters, total, started }
    }

    /// Stops the display: clears the bar, or prints the final plain line.
    pub fn finish(self) {
        self.task.abort();
        match self.bar {
            Some(b) => b.finish_and_clear(),
            None => eprintln!("{}", line(done(&self.counters), self.total, self.started.elapsed())),
        }
    }
}

/// Jobs that reached an end: completed or dead-lettered.
fn done(c: &Counters) -> u64 {
    c.processed.load(Ordering::Relaxed) + c.dead.load(Ordering::Relaxed)
}

fn new_bar(total: u64) -> indicatif::ProgressBar {
    let style = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} jobs  {rate}  ETA {left}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .with_key("rate", |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0} jobs/s", s.per_sec());
        })
        // indicatif's own ETA says 0s before the first batch lands; say "?" until there is a rate.
        .with_key("left", |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = if s.pos() == 0 { write!(w, "?") } else { write!(w, "{}", human(s.eta())) };
        });
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(style);
    bar
}

/// The plain progress line: `progress: 120/300 jobs, 40 jobs/s, ETA 5s`.
pub fn line(done: u64, total: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let left = total.saturating_sub(done);
    let eta = if left == 0 {
        "0s".to_string()
    } else if rate > 0.0 {
        human(Duration::from_secs_f64(left as f64 / rate))
    } else {
        "unknown".to_string()
    };
    format!("progress: {done}/{total} jobs, {rate:.0} jobs/s, ETA {eta}")
}

/// `7s`, `2m05s`, `1h02m`.
fn human(d: Duration) -> String {
    let s = d.as_secs_f64().ceil() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_line_gives_done_rate_and_eta() {
        let cases = [
            (120, 300, 3.0, "progress: 120/300 jobs, 40 jobs/s, ETA 5s"),
            (300, 300, 7.5, "progress: 300/300 jobs, 40 jobs/s, ETA 0s"),
            (0, 300, 2.0, "progress: 0/300 jobs, 0 jobs/s, ETA unknown"),
            (10, 2000, 1.0, "progress: 10/2000 jobs, 10 jobs/s, ETA 3m19s"),
            (1, 10_000, 1.0, "progress: 1/10000 jobs, 1 jobs/s, ETA 2h46m"),
            (5, 3, 0.0, "progress: 5/3 jobs, 0 jobs/s, ETA 0s"),
        ];
        for (done, total, secs, want) in cases {
            assert_eq!(line(done, total, Duration::from_secs_f64(secs)), want);
        }
    }
}
