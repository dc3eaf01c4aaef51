//! `embq prune`: delete finished jobs older than a retention period, in short batches, so the
//! jobs table (and every scan of it) stops growing with history.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::CliError;
use crate::config::Config;
use crate::queue::{PruneRequest, PRUNE_BATCH_SIZE};

/// Rows between two progress lines.
const PROGRESS_EVERY: u64 = 100_000;

/// `embq prune` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Delete jobs finished longer ago than this (`7d`, `36h`, `90m`): done, superseded and
    /// cancelled ones; their vectors stay in embq.embeddings.
    #[arg(long, env = "PRUNE_OLDER_THAN", value_parser = parse_duration)]
    pub older_than: Duration,
    /// Also delete dead-lettered jobs that failed longer ago (kept by default, for `embq dlq`).
    #[arg(long)]
    pub dead: bool,
    /// Rows per delete; each batch is its own short transaction.
    #[arg(long, default_value_t = PRUNE_BATCH_SIZE, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rows_per_batch: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// A duration with its unit, as every embq duration setting.
fn parse_duration(v: &str) -> Result<Duration, String> {
    embq_duration::parse(v).map_err(|e| e.to_string())
}

/// Runs `embq prune`.
pub async fn run(cfg: Config, args: Args) -> Result<(), CliError> {
    let q = crate::queue::connect(&cfg.store()).await?;
    q.check_schema().await?;
    let req = PruneRequest { older_than: args.older_than, dead: args.dead, batch_size: args.rows_per_batch };
    let started = Instant::now();
    // A first run through a large history takes minutes: say how far it got, every 100,000 rows.
    let logged = AtomicU64::new(0);
    let progress = move |deleted: u64| {
        let step = deleted / PROGRESS_EVERY;
        if step > logged.load(Ordering::Relaxed) {
            logged.store(step, Ordering::Relaxed);
            tracing::info!(deleted, "pruning");
        }
    };
    let report = q.prune(&req, &progress).await?;
    let took = started.elapsed();
    if args.json {
        let mut v = serde_json::to_value(report).map_err(|e| CliError::Other(e.to_string()))?;
        v["seconds"] = serde_json::json!(took.as_secs_f64());
        println!("{v}");
    } else {
        println!(
            "pruned {} finished and {} dead-lettered jobs older than {}s in {} batches ({:.1}s)",
            report.finished,
            report.dead,
            args.older_than.as_secs(),
            report.batches,
            took.as_secs_f64()
        );
    }
    Ok(())
}
