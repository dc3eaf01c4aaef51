//! The accept loop behind the health and metrics ports: every connection gets a deadline for its
//! request headers and a deadline for its whole life, and at most `max_connections` are open at
//! once, so clients that connect and send nothing (or trickle) cannot exhaust a worker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::MockConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// Bounds on what one client may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time to send the request line and headers.
    pub header_timeout: Duration,
    /// Time a connection may stay open, whatever it does (bodies, keep-alive).
    pub connection_timeout: Duration,
    /// Open connections at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// How long open connections may finish after shutdown.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(30),
            max_connections: 64,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max = limits.max_connections, "connection refused: too many open");
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(router.clone().layer(MockConnectInfo::<SocketAddr>(peer)));
        tracker.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            // Dropping the connection at the deadline closes it, whatever state it is in.
            if let Ok(Err(e)) = tokio::time::timeout(limits.connection_timeout, conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(limits.drain_timeout, tracker.wait()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn start(limits: Limits) -> (SocketAddr, tokio_util::sync::CancellationToken) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        let app =
            Router::new().route(
                "/peer",
                get(|axum::extract::ConnectInfo(p): axum::extract::ConnectInfo<SocketAddr>| async move {
                    p.ip().to_string()
                }),
            );
        tokio::spawn(serve(listener, app, limits, async move { s.cancelled().await }));
        (addr, stop)
    }

    async fn get_peer(addr: SocketAddr) -> Option<String> {
        let mut c = TcpStream::connect(addr).await.ok()?;
        c.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.ok()?;
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut out)).await.ok()?.ok()?;
        out.starts_with("HTTP/1.1 200").then_some(out)
    }

    /// Reads until the server closes the connection; true if it did within `within`.
    async fn closed_within(c: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 256];
        matches!(
            tokio::time::timeout(within, async {
                loop {
                    match c.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await,
            Ok(())
        )
    }

    #[tokio::test]
    async fn a_client_that_sends_no_headers_is_cut_off() {
        let limits = Limits { header_timeout: Duration::from_millis(200), ..Limits::default() };
        let (addr, _stop) = start(limits).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut idle, Duration::from_secs(5)).await, "closed after the header deadline");
        let body = get_peer(addr).await.expect("the port still answers");
        assert!(body.ends_with("127.0.0.1"), "ConnectInfo reaches the handlers: {body}");
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_cap_are_refused_and_the_cap_frees_up() {
        let limits = Limits {
            header_timeout: Duration::from_secs(60),
            connection_timeout: Duration::from_millis(500),
            max_connections: 2,
            ..Limits::default()
        };
        let (addr, _stop) = start(limits).await;
        let mut held = vec![TcpStream::connect(addr).await.unwrap(), TcpStream::connect(addr).await.unwrap()];
        // Let the server accept both before the third arrives.
        tokio::task::yield_now().await;
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut third, Duration::from_millis(400)).await, "a third connection is closed at once");
        for c in &mut held {
            assert!(closed_within(c, Duration::from_secs(5)).await, "held connections end at their deadline");
        }
        assert!(get_peer(addr).await.is_some(), "slots are free again");
    }
}
