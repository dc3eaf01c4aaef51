//! `embq worker`: the long-running worker with its health and metrics servers.

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::CliError;
use crate::config::Config;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::provider::{HashProvider, Provider, ProviderKind};
use crate::worker::{Worker, WorkerError};

/// `embq worker` options.
#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// Exit 0 once no job is ready and none is in flight.
    #[arg(long)]
    pub drain: bool,
    /// Development only: delay each `hash` provider call (ms), to test mid-batch failures.
    #[arg(long, hide = true, default_value_t = 0)]
    pub hash_delay_ms: u64,
    /// Development only: a memory limit below MEMORY_LIMIT_MB's floor, to test the memory guard.
    #[arg(long, hide = true, env = "EMBQ_DEV_MEMORY_LIMIT_KIB")]
    pub dev_memory_limit_kib: Option<u64>,
}

/// Binds a port on all interfaces (pods are reached by their IP), IPv6 and IPv4 where possible.
async fn bind(port: u16, what: &str) -> Result<tokio::net::TcpListener, CliError> {
    let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    match tokio::net::TcpListener::bind(v6).await {
        Ok(l) => Ok(l),
        Err(_) => tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
            .await
            .map_err(|e| CliError::Other(format!("cannot listen on the {what} port {port}: {e}"))),
    }
}

/// Builds the provider, opens the store and runs the worker until drained.
pub async fn run(mut cfg: Config, args: Args) -> Result<(), CliError> {
    if let Some(kib) = args.dev_memory_limit_kib {
        cfg.memory_limit_bytes = kib.saturating_mul(1024);
    }
    let provider: Arc<dyn Provider> = if args.hash_delay_ms > 0 && cfg.provider == ProviderKind::Hash {
        Arc::new(HashProvider::new(&cfg.model, cfg.dimensions).with_delay(Duration::from_millis(args.hash_delay_ms)))
    } else {
        cfg.provider().map_err(|e| CliError::Other(e.to_string()))?
    };
    let metrics = Arc::new(Metrics::new(crate::VERSION, cfg.provider.as_str(), &cfg.model));
    // The claim loop ticks at least every second; 30 s of silence means it is stuck.
    let health = Arc::new(Health::new(cfg.worker_id.clone(), cfg.enable_queue_processing, Duration::from_secs(30)));

    let health_listener = bind(cfg.health_port, "health").await?;
    let metrics_listener = bind(cfg.metrics_port, "metrics").await?;
    info!(health = %health_listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
          metrics = %metrics_listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
          "listening");
    let servers_stop = CancellationToken::new();
    let s1 = servers_stop.clone();
    let s2 = servers_stop.clone();
    let health_server = tokio::spawn(crate::http::serve(
        health_listener,
        crate::http::health_router(
            health.clone(),
            crate::http::ShutdownAuth {
                token: cfg.shutdown_token.clone(),
                loopback_exempt: cfg.shutdown_loopback_exempt,
            },
        ),
        async move { s1.cancelled().await },
    ));
    let metrics_server = tokio::spawn(crate::http::serve(
        metrics_listener,
        crate::http::metrics_router(metrics.clone(), health.clone()),
        async move { s2.cancelled().await },
    ));

    // A worker started while the database is down keeps trying, live but not ready (the startup
    // probe decides how long that may last), instead of exiting into a crash loop.
    let stopping = health.shutdown.clone();
    let store = cfg.store();
    let connecting = crate::queue::connect_until(&store, |_| !stopping.is_cancelled());
    let queue = tokio::select! {
        q = connecting => match q {
            Ok(q) => q,
            Err(_) if stopping.is_cancelled() => {
                info!("shutdown requested before the database could be reached");
                servers_stop.cancel();
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        },
        _ = super::signal() => {
            info!("stopped before the database could be reached");
            servers_stop.cancel();
            return Ok(());
        }
    };
    // A typed vector column of other dimensions would refuse every batch: refuse to start instead
    // (exit 78, both numbers named). An unmigrated schema is reported by the worker itself.
    match queue.check_vectors().await {
        Err(e @ crate::queue::QueueError::Schema(_)) if queue.check_schema().await.is_ok() => return Err(e.into()),
        Err(e) => warn!(error = %e, "could not check the vector column yet"),
        Ok(()) => {}
    }
    let worker = Worker::new(cfg, queue, provider, health.clone(), metrics).drain_when_idle(args.drain);
    let hard = worker.hard_cancel();

    // First signal: graceful drain. Second signal: cancel in-flight work now (leases are released).
    let soft = health.shutdown.clone();
    let signals = tokio::spawn(async move {
        super::signal().await;
        info!("shutdown signal received: draining");
        soft.cancel();
        super::signal().await;
        warn!("second signal: cancelling in-flight batches");
        hard.cancel();
    });

    let result = worker.run().await;
    signals.abort();
    servers_stop.cancel();
    let _ = health_server.await;
    let _ = metrics_server.await;
    match result {
        Ok(_) => Ok(()),
        Err(WorkerError::Schema(msg)) => Err(CliError::Queue(crate::queue::QueueError::Schema(msg))),
    }
}
