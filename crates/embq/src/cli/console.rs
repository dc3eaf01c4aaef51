//! `embq console`: serves the web console (see `crate::console`) until interrupted.

use std::net::SocketAddr;

use super::CliError;
use crate::config::Config;
use crate::console::{Access, Console};
use crate::redact::Secret;

/// `embq console` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on; anything but loopback needs CONSOLE_TOKEN.
    #[arg(long, env = "CONSOLE_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Token every caller must present (log in at /login, or `Authorization: Bearer`).
    #[arg(long, env = "CONSOLE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Checks the options, then serves until Ctrl-C or SIGTERM.
pub async fn run(cfg: Config, args: Args) -> Result<(), CliError> {
    let token = args.token.filter(|t| !t.trim().is_empty()).map(Secret::new);
    if token.is_none() && !args.listen.ip().is_loopback() {
        return Err(CliError::Config(crate::config::ConfigError(vec![format!(
            "CONSOLE_LISTEN {} is not a loopback address: set CONSOLE_TOKEN so callers must present it",
            args.listen
        )])));
    }
    if let Some(t) = &token {
        if !t.expose().bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CliError::Config(crate::config::ConfigError(vec![
                "CONSOLE_TOKEN must be printable ASCII without spaces (it travels in a cookie)".into(),
            ])));
        }
    }
    let provider = cfg.provider().map_err(|e| CliError::Other(e.to_string()))?;
    let queue = crate::queue::connect(&cfg.store()).await?;
    queue.check_schema().await?;
    let budgets_url = (!cfg.database_url.is_sqlite()).then(|| cfg.database_url.for_driver());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| CliError::Other(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener.local_addr().map_err(|e| CliError::Other(e.to_string()))?;
    // Printed on stdout so scripts (and the browser tests) learn the port when 0 was asked for.
    println!("embq console on http://{addr}/");
    let console = Console { queue, provider, budgets_url, access: Access::new(token) };
    crate::console::serve(listener, console, super::signal())
        .await
        .map_err(|e| CliError::Other(format!("console server failed: {e}")))
}
