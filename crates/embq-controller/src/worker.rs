//! HTTP calls to one worker on its pod IP: /health, /metrics, and the drain wait.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Config;
use crate::observe::{parse_worker_metrics, WorkerMetrics};
use crate::Error;

/// A client for the workers' HTTP endpoints.
#[derive(Clone)]
pub struct WorkerClient {
    http: reqwest::Client,
    health_port: u16,
    metrics_port: u16,
}

/// What one `GET /health` told the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// A 2xx answer.
    Ok,
    /// The worker answered, and not with 2xx: it says it is unwell.
    Failing,
    /// No answer (timeout, connection refused or reset): the path from the controller to
    /// the pod, or a throttled CPU, as much as the worker. Not evidence either way.
    Unknown,
}

/// How a drain wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// No job in flight any more (or the process is gone).
    Drained(Duration),
    /// Still busy, or not answering, at the deadline; the kubelet ends it at its grace period.
    TimedOut,
}

impl WorkerClient {
    pub fn new(config: &Config) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(config.scrape_timeout)
            .connect_timeout(config.scrape_timeout)
            // Pod IPs are reached directly: a cluster-wide HTTP proxy must not see them.
            .no_proxy()
            .build()
            .map_err(|e| Error::Setup(format!("worker HTTP client: {e}")))?;
        Ok(Self { http, health_port: config.worker_health_port, metrics_port: config.worker_metrics_port })
    }

    fn url(ip: IpAddr, port: u16, path: &str) -> String {
        // SocketAddr's Display brackets IPv6 addresses.
        format!("http://{}{path}", SocketAddr::new(ip, port))
    }

    /// `GET /health`: [`Health::Ok`] on 2xx, [`Health::Failing`] on another answer,
    /// [`Health::Unknown`] without one.
    pub async fn health(&self, ip: IpAddr) -> Health {
        match self.http.get(Self::url(ip, self.health_port, "/health")).send().await {
            Ok(r) if r.status().is_success() => Health::Ok,
            Ok(_) => Health::Failing,
            Err(_) => Health::Unknown,
        }
    }

    /// `GET /metrics`, parsed.
    pub async fn metrics(&self, ip: IpAddr) -> Result<WorkerMetrics, Error> {
        let url = Self::url(ip, self.metrics_port, "/metrics");
        self.fetch_metrics(&url).await.map_err(|e| Error::Worker(format!("GET {url}: {e}")))
    }

    async fn fetch_metrics(&self, url: &str) -> Result<WorkerMetrics, reqwest::Error> {
        let resp = self.http.get(url).send().await.and_then(|r| r.error_for_status())?;
        Ok(parse_worker_metrics(&resp.text().await?))
    }

    /// Polls the worker's in-flight gauge until it is zero or the worker refuses
    /// connections (it exited), bounded by `timeout`. A poll that fails otherwise (timeout,
    /// 5xx) says nothing about the jobs in flight, so it is not "drained".
    pub async fn wait_drained(&self, ip: IpAddr, timeout: Duration, poll: Duration) -> Drain {
        let start = Instant::now();
        let deadline = start + timeout;
        loop {
            match self.fetch_metrics(&Self::url(ip, self.metrics_port, "/metrics")).await {
                Ok(m) if m.inflight.unwrap_or(0.0) <= 0.0 => return Drain::Drained(start.elapsed()),
                Ok(_) => {}
                // Connection refused: the process exited after its drain, nothing is in flight.
                Err(e) if e.is_connect() && !e.is_timeout() => return Drain::Drained(start.elapsed()),
                // A timeout or a 5xx is a failed poll, not a drained worker: ask again.
                Err(_) => {}
            }
            if Instant::now() + poll > deadline {
                return Drain::TimedOut;
            }
            tokio::time::sleep(poll).await;
        }
    }
}
