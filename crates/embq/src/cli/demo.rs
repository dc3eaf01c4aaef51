//! `embq demo`: the whole pipeline on embedded defaults — SQLite, bundled receipts, a worker
//! that drains them under a progress display — with a summary, a search example and the
//! command to search again at the end. Safe to run again: unchanged texts are recognised and
//! cost no provider call.

use std::io::IsTerminal;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::invocation::{shell_quote, Invocation};
use super::progress::Progress;
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

/// What the user set explicitly, so the demo does not override it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Chosen {
    /// `EMBEDDING_PROVIDER` was given.
    pub provider: bool,
    /// `BATCH_SIZE` was given.
    pub batch_size: bool,
    /// `DATABASE_URL` was given.
    pub database_url: bool,
}

/// Jobs per request for the local model unless `BATCH_SIZE` says otherwise: BENCHMARKS.md
/// measures it 3.4x faster at 32 texts per call than at one (the default `BATCH_SIZE` is 5).
const LOCAL_BATCH: usize = 32;

/// The query of the search example the demo ends with.
const EXAMPLE_QUERY: &str = "coffee";
/// Hits shown in the search example.
const EXAMPLE_HITS: usize = 3;

/// Runs the demo.
pub async fn run(mut cfg: Config, args: Args, chosen: Chosen) -> Result<(), CliError> {
    let input = match &args.jobs {
        Some(p) => std::fs::read(p).map_err(|e| CliError::Input(format!("cannot read {}: {e}", p.display())))?,
        None => SAMPLE.to_vec(),
    };
    let parsed = super::enqueue::parse_jsonl(&input);
    if let Some(first) = parsed.errors.first() {
        return Err(CliError::Input(format!("the sample set is invalid: {first}")));
    }
    if !chosen.provider {
        let cfg2 = &mut cfg;
        let note = tokio::task::block_in_place(|| super::model::prefer_local_for_demo(cfg2));
        println!("{note}");
    }
    let provider = cfg.provider().map_err(|e| CliError::Other(e.to_string()))?;
    cfg.batch_size = batch_size(cfg.provider, cfg.batch_size, chosen.batch_size, provider.max_inputs());
    println!(
        "embq demo: store {}, provider {} (model {}, {} dimensions), {} jobs per batch",
        cfg.database_url,
        cfg.provider.as_str(),
        cfg.model,
        cfg.dimensions,
        cfg.batch_size.get().min(provider.max_inputs().max(1)),
    );
    if cfg.provider == ProviderKind::Hash {
        println!("  note: `hash` is the development provider: vectors come from word hashing, not a language model");
    }
    let queue = crate::queue::connect(&cfg.store()).await?;
    queue.migrate().await?;
    let report = queue.enqueue(&parsed.jobs, &crate::queue::no_progress).await?;
    let total = report.inserted + report.replaced;
    println!("queued {total} jobs ({} new, {} replaced pending ones)", report.inserted, report.replaced);

    let command = next_command(&cfg, chosen);
    let metrics = Arc::new(Metrics::new(crate::VERSION, cfg.provider.as_str(), &cfg.model));
    let health = Arc::new(Health::new(cfg.worker_id.clone(), true, Duration::from_secs(30)));
    let worker = Worker::new(cfg, queue.clone(), provider.clone(), health.clone(), metrics)
        .drain_when_idle(true)
        .quiet_batches(true);
    let soft = health.shutdown.clone();
    let signals = tokio::spawn(async move {
        super::signal().await;
        soft.cancel();
    });
    let progress = Progress::start(worker.counters(), total, std::io::stderr().is_terminal());
    let started = Instant::now();
    let summary = worker.run().await;
    let took = started.elapsed();
    progress.finish();
    signals.abort();
    let summary = summary.map_err(|e| CliError::Other(e.to_string()))?;
    let stats = queue.stats().await?;
    let rate = summary.processed as f64 / took.as_secs_f64().max(1e-9);
    println!("done: {} jobs in {} ({rate:.0} jobs/s)", summary.processed, super::secs(took));
    println!("  embedded now: {}", summary.processed - summary.unchanged);
    println!("  unchanged (already embedded, no provider call): {}", summary.unchanged);
    println!("  dead-lettered: {} (in the dead-letter queue: {})", summary.dead, stats.dead);
    let found = super::search::nearest(provider.as_ref(), queue.as_ref(), EXAMPLE_QUERY, EXAMPLE_HITS, None).await?;
    println!("search \"{EXAMPLE_QUERY}\" (score, key, text):");
    for h in &found.hits {
        println!("  {}", super::search::hit_line(h));
    }
    if found.hits.is_empty() {
        println!("  no embeddings of model {} are stored yet", provider.model());
    }
    println!("search for anything else with:");
    println!("{command}");
    Ok(())
}

/// The demo's batch size: the local model's when the user set none, else `BATCH_SIZE`; the
/// provider's input cap bounds both.
fn batch_size(provider: ProviderKind, configured: NonZeroUsize, chosen: bool, cap: usize) -> NonZeroUsize {
    if chosen || provider != ProviderKind::Local {
        return configured;
    }
    NonZeroUsize::new(LOCAL_BATCH.min(cap)).unwrap_or(configured)
}

/// The search command the demo ends with, runnable from where the user stands: it repeats the
/// provider and SQLite file the user chose (a PostgreSQL URL may hold a password: not printed).
fn next_command(cfg: &Config, chosen: Chosen) -> String {
    let mut words = Vec::new();
    if chosen.database_url && cfg.database_url.is_sqlite() {
        words.push(format!("DATABASE_URL={}", shell_quote(cfg.database_url.expose())));
    }
    if chosen.provider {
        words.push(format!("EMBEDDING_PROVIDER={}", cfg.provider.as_str()));
    }
    words.push(Invocation::current().prefix());
    words.push(format!("search \"{EXAMPLE_QUERY}\""));
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_model_gets_its_batch_size_unless_the_user_set_one() {
        let five = NonZeroUsize::new(5).expect("nonzero");
        let cases = [
            (ProviderKind::Local, false, 32, 32),
            (ProviderKind::Local, false, 16, 16),
            (ProviderKind::Local, true, 32, 5),
            (ProviderKind::Hash, false, 2048, 5),
            (ProviderKind::Openai, false, 2048, 5),
        ];
        for (kind, chosen, cap, want) in cases {
            assert_eq!(batch_size(kind, five, chosen, cap).get(), want, "{kind:?} chosen={chosen} cap={cap}");
        }
    }
}
