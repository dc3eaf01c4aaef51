//! `embq queue …`: queue statistics and workers.

use super::CliError;
use crate::config::Config;
use crate::queue::{LaneStats, QueueError};

/// `embq queue` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Jobs by state, oldest ready age, ready jobs per priority and per lane, provider batches.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Workers known to the queue.
    Workers {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The batch lane's part of `embq queue stats`.
fn print_lanes(l: &LaneStats) {
    let lane = |name: &str| l.ready_by_lane.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c);
    println!("ready by lane: online {}, batch {}", lane("online"), lane("batch"));
    if l.batches_by_state.is_empty() {
        return;
    }
    let batches: Vec<String> = l.batches_by_state.iter().map(|(s, n)| format!("{s} {n}")).collect();
    println!("provider batches: {}", batches.join(", "));
    println!("  jobs inside open batches: {}", l.in_batches);
    println!("  estimated tokens enqueued at the provider: {}", l.enqueued_tokens);
    println!("  tokens billed at batch price: {}", l.billed_tokens);
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, CliError> {
    serde_json::to_string_pretty(v).map_err(|e| CliError::Other(e.to_string()))
}

/// Runs a queue subcommand.
pub async fn run(cfg: Config, cmd: Cmd) -> Result<(), CliError> {
    let q = crate::queue::connect(&cfg.store()).await?;
    q.check_schema().await?;
    match cmd {
        Cmd::Stats { json: as_json } => {
            let s = q.stats().await?;
            let pauses = super::budget::pauses(&cfg).await?;
            // Stores without the batch lane have nothing to show for it.
            let lanes = match q.lane_stats().await {
                Ok(l) => Some(l),
                Err(QueueError::Invalid(_)) => None,
                Err(e) => return Err(e.into()),
            };
            if as_json {
                let mut v = serde_json::to_value(&s).map_err(|e| CliError::Other(e.to_string()))?;
                v["provider_pauses"] = serde_json::to_value(&pauses).map_err(|e| CliError::Other(e.to_string()))?;
                v["lanes"] = serde_json::to_value(&lanes).map_err(|e| CliError::Other(e.to_string()))?;
                println!("{}", json(&v)?);
                return Ok(());
            }
            println!("ready       {}", s.ready);
            println!("scheduled   {}", s.scheduled);
            println!("running     {}", s.running);
            println!("done        {}", s.done);
            println!("dead        {}", s.dead);
            println!("superseded  {}", s.superseded);
            println!("cancelled   {}", s.cancelled);
            match s.oldest_ready_age_seconds {
                Some(a) => println!("oldest ready job waited {a:.1}s"),
                None => println!("no ready jobs"),
            }
            for (prio, n) in &s.ready_by_priority {
                println!("  priority {prio:>4}: {n} ready");
            }
            if let Some(l) = &lanes {
                print_lanes(l);
            }
            for p in &pauses {
                println!(
                    "provider paused: budget {} for {:.0}s more (`embq budget resume` ends it now)",
                    p.budget, p.seconds_left
                );
            }
        }
        Cmd::Workers { json: as_json } => {
            let w = q.workers().await?;
            if as_json {
                println!("{}", json(&w)?);
                return Ok(());
            }
            println!("{:<40} {:<9} {:>9} {:>10} {:>7}", "WORKER", "STATE", "IN FLIGHT", "PROCESSED", "FAILED");
            for w in w {
                println!("{:<40} {:<9} {:>9} {:>10} {:>7}", w.id, w.state, w.in_flight, w.processed, w.failed);
            }
        }
    }
    Ok(())
}
