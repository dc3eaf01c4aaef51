//! `embq-controller`: parses flags, installs tracing, serves /health and /metrics, and
//! runs the control loop until SIGTERM or Ctrl-C.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use embq_controller::config::{Args, Config, LogFormat};
use embq_controller::controller::{self, Context};
use embq_controller::metrics::Metrics;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let hostname = std::env::var("HOSTNAME").ok();
    let config = match Config::from_args(args, hostname) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }
    tracing::info!(?config, "starting");

    // kube's TLS setup uses rustls' process default provider; choose it explicitly, since a
    // workspace build may enable both ring and aws-lc-rs, and rustls will not pick between them.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default().await.context("no Kubernetes configuration (in-cluster or kubeconfig)")?;
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let metrics = Arc::new(Metrics::new());
    let ctx = Arc::new(Context::new(client, config, metrics.clone())?);

    let shutdown = ctx.shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    let app = embq_controller::http::app(metrics, ctx.liveness.clone());
    let http_shutdown = ctx.shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(http_shutdown.cancelled_owned()).await
    });

    controller::run(ctx).await;
    server.await.context("http task")?.context("http server")?;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
