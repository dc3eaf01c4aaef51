//! The command line: one module per subcommand. Each returns a typed error that
//! `main` maps to a message and an exit code.

mod budget;
mod console;
mod demo;
mod dlq;
mod enqueue;
mod invocation;
mod migrate;
pub use enqueue::{parse_jsonl, Parsed};
pub mod model;
pub mod model_onnx;
mod progress;
mod prune;
mod queue;
pub(crate) mod search;
mod worker;

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{Config, ConfigError, LogFormat, RawConfig};
use crate::queue::QueueError;

/// embq: turn text into embeddings reliably, cheaply and at scale.
#[derive(Parser, Debug)]
#[command(name = "embq", version, about, long_about = None)]
pub struct Cli {
    /// Settings; each flag can also be given as its environment variable.
    #[command(flatten)]
    pub config: RawConfig,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a worker: claim, embed and store jobs until stopped.
    Worker(worker::Args),
    /// Create or upgrade the queue schema and give the vector column its type.
    Migrate(migrate::Args),
    /// Manage the vector index (PostgreSQL with pgvector).
    #[command(subcommand)]
    Index(migrate::IndexCmd),
    /// Queue jobs from JSONL (a file, or standard input).
    Enqueue(enqueue::Args),
    /// Inspect the queue.
    #[command(subcommand)]
    Queue(queue::Cmd),
    /// Delete finished jobs older than a retention period, in short batches.
    Prune(prune::Args),
    /// End a provider's pause of the fleet rate budgets.
    #[command(subcommand)]
    Budget(budget::Cmd),
    /// Serve the web console: overview, jobs, dead letters, search (loopback unless CONSOLE_TOKEN).
    Console(console::Args),
    /// Inspect and repair the dead-letter queue.
    #[command(subcommand)]
    Dlq(dlq::Cmd),
    /// Show the configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Show the metrics this binary exports.
    #[command(subcommand)]
    Metrics(MetricsCmd),
    /// Run the whole pipeline on a bundled sample set, on embedded defaults.
    Demo(demo::Args),
    /// Find the stored embeddings nearest to a query text.
    Search(search::Args),
    /// Fetch or check the local embedding model.
    #[command(subcommand)]
    Model(model::Cmd),
}

/// `embq config …`
#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Validate the configuration and print it, secrets redacted.
    Check {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List every environment variable embq reads.
    Vars,
}

/// `embq metrics …`
#[derive(Subcommand, Debug)]
pub enum MetricsCmd {
    /// List every metric family name as it appears in /metrics.
    Names,
}

/// Why a command failed; decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad settings (exit 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Bad input data (exit 65).
    #[error("{0}")]
    Input(String),
    /// The store failed (exit 69 when unreachable, 78 for a schema problem, 65 when it refused the data).
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Anything else (exit 1).
    #[error("{0}")]
    Other(String),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) => 2,
            Self::Input(_) => 65,
            Self::Queue(QueueError::Unavailable(_)) => 69,
            Self::Queue(QueueError::Schema(_)) => 78,
            Self::Queue(QueueError::Invalid(_) | QueueError::Rejected(_)) => 65,
            Self::Other(_) => 1,
        }
    }
}

/// Every environment variable the binary reads, from the flag definitions: the global ones and
/// those of subcommands (`PRUNE_OLDER_THAN`), leaving out hidden development switches.
pub fn env_vars() -> Vec<String> {
    let cmd = Cli::command();
    let subcommand_args = cmd.get_subcommands().flat_map(|s| s.get_arguments());
    let mut vars: Vec<String> = cmd
        .get_arguments()
        .chain(subcommand_args.filter(|a| !a.is_hide_set()))
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    vars.push("RUST_LOG".into());
    vars.sort();
    vars.dedup();
    vars
}

/// Installs logging on stderr; `RUST_LOG` overrides `default_filter`.
fn init_tracing(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
        LogFormat::Text => builder.with_target(false).init(),
    }
}

fn runtime(cfg: &Config) -> Result<tokio::runtime::Runtime, CliError> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(cores) = cfg.cpu_limit_cores {
        // A fractional limit still needs one thread; 1.5 cores get two.
        b.worker_threads((cores.ceil() as usize).max(1));
    }
    b.enable_all().build().map_err(|e| CliError::Other(format!("cannot start the async runtime: {e}")))
}

/// Runs the parsed command line and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    // These two need no valid configuration.
    match &cli.command {
        Command::Config(ConfigCmd::Vars) => {
            for v in env_vars() {
                println!("{v}");
            }
            return ExitCode::SUCCESS;
        }
        Command::Metrics(MetricsCmd::Names) => {
            for n in crate::metrics::Metrics::new(crate::VERSION, "hash", "hash-v1").names() {
                println!("{n}");
            }
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let cfg = match cli.config.validate() {
        Ok(c) => c,
        Err(e) => {
            // LOG_FORMAT itself may be what is wrong: JSON only when it plainly says so.
            let json = cli.config.log_format.as_deref().is_some_and(|f| f.trim().eq_ignore_ascii_case("json"));
            return fatal(json, &e.to_string(), 2);
        }
    };
    // The demo shows its own progress on stderr: only warnings and errors print among it
    // unless RUST_LOG asks for more.
    let default_filter = if matches!(cli.command, Command::Demo(_)) { "warn" } else { "info,sqlx=warn" };
    init_tracing(cfg.log_format, default_filter);
    // The demo prefers the local model unless the user picked a provider.
    let chosen = demo::Chosen {
        provider: cli.config.embedding_provider.is_some(),
        batch_size: cli.config.batch_size.is_some(),
        database_url: cli.config.database_url.is_some(),
    };
    let json = cfg.log_format == LogFormat::Json;
    let result = runtime(&cfg).and_then(|rt| rt.block_on(run(cli.command, cfg, chosen)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fatal(json, &e.to_string(), e.exit_code()),
    }
}

/// Reports the error that ends the process on stderr, as a JSON line like every other log line
/// in JSON mode (the keys `tracing`'s JSON format uses), and returns its exit code.
fn fatal(json: bool, error: &str, code: u8) -> ExitCode {
    if json {
        let line = serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": "ERROR",
            "message": "embq failed",
            "error": error,
            "exit_code": code,
        });
        eprintln!("{line}");
    } else {
        eprintln!("embq: {error}");
    }
    ExitCode::from(code)
}

async fn run(command: Command, cfg: Config, chosen: demo::Chosen) -> Result<(), CliError> {
    match command {
        Command::Worker(args) => worker::run(cfg, args).await,
        Command::Migrate(args) => migrate::run(cfg, args).await,
        Command::Index(cmd) => migrate::index(cfg, cmd).await,
        Command::Enqueue(args) => enqueue::run(cfg, args).await,
        Command::Queue(cmd) => queue::run(cfg, cmd).await,
        Command::Prune(args) => prune::run(cfg, args).await,
        Command::Budget(cmd) => budget::run(cfg, cmd).await,
        Command::Dlq(cmd) => dlq::run(cfg, cmd).await,
        Command::Console(args) => console::run(cfg, args).await,
        Command::Config(ConfigCmd::Check { json }) => {
            let c = cfg.connections();
            let text = if json {
                let mut v = serde_json::to_value(&cfg).map_err(|e| CliError::Other(e.to_string()))?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("database_connections_per_worker".into(), serde_json::json!(c));
                }
                serde_json::to_string_pretty(&v).map_err(|e| CliError::Other(e.to_string()))?
            } else {
                format!(
                    "{cfg:#?}\ndatabase connections per worker: {} (pool {} + LISTEN {} + fleet budget {}); \
                     replicas x {} must stay below the server's max_connections",
                    c.total, c.pool, c.listen, c.fleet_budget, c.total
                )
            };
            println!("{text}");
            println!("configuration is valid");
            Ok(())
        }
        Command::Config(ConfigCmd::Vars) | Command::Metrics(MetricsCmd::Names) => Ok(()),
        Command::Demo(args) => demo::run(cfg, args, chosen).await,
        Command::Search(args) => {
            // Search must embed the query with the demo's model, so it makes the same choice.
            let mut cfg = cfg;
            if !chosen.provider {
                let note = tokio::task::block_in_place(|| model::prefer_local_for_demo(&mut cfg));
                tracing::info!("{note}");
            }
            search::run(cfg, args).await
        }
        Command::Model(cmd) => model::run(cfg, cmd).await,
    }
}

/// Waits for SIGTERM or Ctrl-C.
pub(crate) async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Formats a duration for humans.
pub(crate) fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn env_vars_include_the_seed_names() {
        let vars = env_vars();
        for v in [
            "QUEUE_POLL_INTERVAL",
            "MAX_CONCURRENT_JOBS",
            "BATCH_SIZE",
            "HEARTBEAT_INTERVAL",
            "MAX_REQUESTS_PER_MINUTE",
            "MAX_TOKENS_PER_MINUTE",
            "BACKOFF_MULTIPLIER",
            "MEMORY_LIMIT_MB",
            "CPU_LIMIT_CORES",
            "ENABLE_QUEUE_PROCESSING",
            "ENABLE_BATCH_OPTIMIZATION",
            "DATABASE_URL",
            "SHUTDOWN_TOKEN",
        ] {
            assert!(vars.contains(&v.to_string()), "{v} missing");
        }
    }
}
