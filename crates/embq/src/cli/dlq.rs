//! `embq dlq …`: list, retry and purge dead-lettered jobs.

use super::CliError;
use crate::config::Config;
use crate::queue::DeadSelection;

/// Which jobs a retry or purge applies to.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Which {
    /// Job ids.
    pub ids: Vec<i64>,
    /// Every dead-lettered job.
    #[arg(long)]
    pub all: bool,
}

impl Which {
    fn selection(&self) -> DeadSelection {
        if self.all {
            DeadSelection::All
        } else {
            DeadSelection::Ids(self.ids.clone())
        }
    }
}

/// `embq dlq` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// List dead-lettered jobs, newest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make dead-lettered jobs ready again with a fresh attempt budget.
    Retry(Which),
    /// Delete dead-lettered jobs.
    Purge(Which),
}

/// Runs a dlq subcommand.
pub async fn run(cfg: Config, cmd: Cmd) -> Result<(), CliError> {
    let q = crate::queue::connect(&cfg.store()).await?;
    q.check_schema().await?;
    match cmd {
        Cmd::List { limit, json } => {
            let jobs = q.dead_jobs(limit.max(0)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs).map_err(|e| CliError::Other(e.to_string()))?);
                return Ok(());
            }
            if jobs.is_empty() {
                println!("the dead-letter queue is empty");
            }
            for j in jobs {
                println!(
                    "{}\t{}/{}/{}\tattempts={}\t{}\t{}",
                    j.id,
                    j.source_type,
                    j.source_id,
                    j.content_type,
                    j.attempts,
                    j.failed_at.to_rfc3339(),
                    j.last_error.unwrap_or_default()
                );
            }
        }
        Cmd::Retry(w) => {
            let n = q.retry_dead(&w.selection()).await?;
            println!("{n} dead-lettered job(s) queued again");
        }
        Cmd::Purge(w) => {
            let n = q.purge_dead(&w.selection()).await?;
            println!("{n} dead-lettered job(s) deleted");
        }
    }
    Ok(())
}
