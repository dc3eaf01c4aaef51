//! `embq demo`: the whole pipeline on embedded defaults — SQLite, bundled receipts, a worker
//! that drains them — with a summary at the end. Safe to run again: unchanged texts are
//! recognised and cost no provider call.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::CliError;
use crate::config::{Config, ProviderKind};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::worker::Worker;

/// The bundled sample set: receipt-like texts.
const SAMPLE: &[u8] = include_bytes!("../../../../examples/receipts.jsonl");

/// `embq demo` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// JSONL file to use instead of the bundled receipts.
    #[arg(long)]
    pub jobs: Option<std::path::PathBuf>,
}

/// Runs the demo.
pub async fn run(mut cfg: Config, args: Args, provider_chosen: bool) -> Result<(), CliError> {
    let input = match &args.jobs {
        Some(p) => std::fs::read(p).map_err(|e| CliError::Input(format!("cannot read {}: {e}", p.display())))?,
        None => SAMPLE.to_vec(),
    };
    let parsed = super::enqueue::parse_jsonl(&input);
    if let Some(first) = parsed.errors.first() {
        return Err(CliError::Input(format!("the sample set is invalid: {first}")));
    }
    if !provider_chosen {
        let cfg2 = &mut cfg;
        let note = tokio::task::block_in_place(|| super::model::prefer_local_for_demo(cfg2));
        println!("{note}");
    }
    println!(
        "embq demo: store {}, provider {} (model {}, {} dimensions)",
        cfg.database_url,
        cfg.provider.as_str(),
        cfg.model,
        cfg.dimensions
    );
    if cfg.provider == ProviderKind::Hash {
        println!("  note: `hash` is the development provider: vectors come from word hashing, not a language model");
    }
    let provider = cfg.provider().map_err(|e| CliError::Other(e.to_string()))?;
    let queue = crate::queue::connect(&cfg.store()).await?;
    queue.migrate().await?;
    let report = queue.enqueue(&parsed.jobs, &crate::queue::no_progress).await?;
    let total = report.inserted + report.replaced;
    println!("queued {total} jobs ({} new, {} replaced pending ones)", report.inserted, report.replaced);

    let metrics = Arc::new(Metrics::new(crate::VERSION, cfg.provider.as_str(), &cfg.model));
    let health = Arc::new(Health::new(cfg.worker_id.clone(), true, Duration::from_secs(30)));
    let worker = Worker::new(cfg, queue.clone(), provider, health.clone(), metrics).drain_when_idle(true);
    let counters = worker.counters();
    let soft = health.shutdown.clone();
    let signals = tokio::spawn(async move {
        super::signal().await;
        soft.cancel();
    });
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} jobs  {per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let progress = bar.clone().map(|b| {
        let c = counters.clone();
        tokio::spawn(async move {
            loop {
                b.set_position(c.processed.load(Ordering::Relaxed) + c.dead.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let started = Instant::now();
    let summary = worker.run().await.map_err(|e| CliError::Other(e.to_string()))?;
    let took = started.elapsed();
    signals.abort();
    if let Some(p) = progress {
        p.abort();
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let stats = queue.stats().await?;
    let rate = summary.processed as f64 / took.as_secs_f64().max(1e-9);
    println!("done: {} jobs in {} ({rate:.0} jobs/s)", summary.processed, super::secs(took));
    println!("  embedded now: {}", summary.processed - summary.unchanged);
    println!("  unchanged (already embedded, no provider call): {}", summary.unchanged);
    println!("  dead-lettered: {} (in the dead-letter queue: {})", summary.dead, stats.dead);
    println!("try: embq search \"coffee\"   |   embq queue stats");
    Ok(())
}
