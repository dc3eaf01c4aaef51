//! `embq queue …`: queue statistics and workers.

use super::CliError;
use crate::config::Config;

/// `embq queue` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Jobs by state, oldest ready age, ready jobs per priority.
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
            if as_json {
                let mut v = serde_json::to_value(&s).map_err(|e| CliError::Other(e.to_string()))?;
                v["provider_pauses"] = serde_json::to_value(&pauses).map_err(|e| CliError::Other(e.to_string()))?;
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
