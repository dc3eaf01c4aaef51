//! `embq budget …`: the provider's pauses of the fleet rate budgets.

use super::CliError;
use crate::config::Config;
use crate::limiter;

/// `embq budget` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// End a provider's pause now (every paused fleet budget, or one): workers resume within a second.
    Resume {
        /// Only this budget (a key from `embq queue stats`).
        #[arg(long)]
        budget: Option<String>,
    },
}

/// Why a SQLite queue has nothing to resume.
const PER_WORKER: &str = "a SQLite queue budgets per worker process: a worker's pause shows in its /ready \
    and embedding_provider_paused_seconds and ends by itself within MAX_PROVIDER_PAUSE (or when it restarts)";

/// The budget store failed: exit 69 like any unreachable database.
fn unavailable(e: limiter::LimiterError) -> CliError {
    let limiter::LimiterError::Unavailable(msg) = e;
    CliError::Queue(crate::queue::QueueError::Unavailable(msg))
}

/// Runs a budget subcommand.
pub async fn run(cfg: Config, cmd: Cmd) -> Result<(), CliError> {
    match cmd {
        Cmd::Resume { budget } => {
            if cfg.database_url.is_sqlite() {
                println!("nothing to resume: {PER_WORKER}");
                return Ok(());
            }
            let q = crate::queue::connect(&cfg.store()).await?;
            q.check_schema().await?;
            let resumed =
                limiter::resume_fleet(&cfg.database_url.for_driver(), budget.as_deref()).await.map_err(unavailable)?;
            match (resumed.is_empty(), budget) {
                (true, Some(b)) => println!("budget {b} is not paused"),
                (true, None) => println!("no fleet budget is paused"),
                (false, _) => {
                    for key in &resumed {
                        println!("resumed {key}");
                    }
                    println!("workers sharing these budgets send again within a second");
                }
            }
            Ok(())
        }
    }
}

/// The paused fleet budgets for `embq queue stats` (none on SQLite).
pub(super) async fn pauses(cfg: &Config) -> Result<Vec<limiter::FleetPause>, CliError> {
    if cfg.database_url.is_sqlite() {
        return Ok(Vec::new());
    }
    limiter::fleet_pauses(&cfg.database_url.for_driver()).await.map_err(unavailable)
}
