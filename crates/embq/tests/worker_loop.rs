//! The worker loop in-process, with providers that fail on purpose: retries, dead letters,
//! throttling and bad inputs end up exactly where they should.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use embq::config::ProviderKind;
use embq::health::Health;
use embq::metrics::Metrics;
use embq::provider::{Embedded, Provider, ProviderError};
use embq::queue::{
    no_progress, ClaimedJob, Clock, DeadJob, DeadSelection, EnqueueReport, FinishReport, IndexOutcome, JobListener,
    Lease, MigrateOptions, MigrateReport, NewJob, Outcome, Progress, PruneReport, PruneRequest, Queue, QueueError,
    QueueStats, RescueReport, SchemaFit, Search, StoredEmbedding, WorkerInfo,
};
use embq::worker::Worker;

/// Decides, from the call number and the texts, whether a call fails.
type Script = Box<dyn Fn(usize, &[&str]) -> Result<(), ProviderError> + Send + Sync>;

/// Answers each call with the next scripted result; vectors are constant.
struct Scripted {
    calls: AtomicUsize,
    script: Script,
}

#[async_trait]
impl Provider for Scripted {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Hash
    }
    fn model(&self) -> &str {
        "scripted"
    }
    fn dimensions(&self) -> usize {
        3
    }
    fn max_inputs(&self) -> usize {
        100
    }
    async fn embed(&self, texts: &[&str]) -> Result<Embedded, ProviderError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        (self.script)(n, texts)?;
        Ok(Embedded { vectors: texts.iter().map(|_| vec![0.6, 0.8, 0.0]).collect(), tokens: None })
    }
}

async fn setup(jobs: usize) -> (Arc<dyn Queue>, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("q.db").display());
    let q = support::store(&url, Clock::System).await;
    q.migrate().await.unwrap();
    q.enqueue(&support::jobs_named(jobs, "j"), &no_progress).await.unwrap();
    (q, url, dir)
}

async fn drain(url: &str, q: Arc<dyn Queue>, p: Arc<Scripted>, extra: &[(&str, &str)]) -> embq::worker::RunSummary {
    let mut settings = vec![
        ("RETRY_BASE_DELAY", "1ms"),
        ("RETRY_MAX_DELAY", "5ms"),
        ("MAX_ATTEMPTS", "3"),
        ("QUEUE_POLL_INTERVAL", "10ms"),
        ("BATCH_SIZE", "4"),
    ];
    settings.extend_from_slice(extra);
    let cfg = support::config_at(url, &settings);
    let health = Arc::new(Health::new("t".into(), true, Duration::from_secs(30)));
    let metrics = Arc::new(Metrics::new("t", "hash", "scripted"));
    let w = Worker::new(cfg, q, p, health, metrics).drain_when_idle(true);
    tokio::time::timeout(Duration::from_secs(60), w.run()).await.expect("drains in time").expect("runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_always_fails_is_dead_lettered_after_max_attempts_with_its_error() {
    let (q, url, _d) = setup(1).await;
    let p = Arc::new(Scripted {
        calls: AtomicUsize::new(0),
        script: Box::new(|_, _| Err(ProviderError::Transient("HTTP 502 from upstream".into()))),
    });
    let s = drain(&url, q.clone(), p.clone(), &[]).await;
    assert_eq!((s.processed, s.failed, s.dead), (0, 3, 1));
    assert_eq!(p.calls.load(Ordering::SeqCst), 3, "one call per attempt, no more");
    let dead = q.dead_jobs(5).await.unwrap();
    assert_eq!(dead[0].attempts, 3);
    let err = dead[0].last_error.clone().unwrap_or_default();
    assert!(err.contains("failed after 3 attempts") && err.contains("HTTP 502 from upstream"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_recover_on_a_later_attempt() {
    let (q, url, _d) = setup(8).await;
    let p = Arc::new(Scripted {
        calls: AtomicUsize::new(0),
        script: Box::new(|n, _| if n < 2 { Err(ProviderError::Transient("timeout".into())) } else { Ok(()) }),
    });
    let s = drain(&url, q.clone(), p, &[("MAX_CONCURRENT_JOBS", "1")]).await;
    assert_eq!((s.processed, s.dead), (8, 0));
    let st = q.stats().await.unwrap();
    assert_eq!((st.done, st.dead), (8, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_input_dead_letters_only_that_job() {
    let (q, url, _d) = setup(4).await;
    let p = Arc::new(Scripted {
        calls: AtomicUsize::new(0),
        script: Box::new(|_, texts| match texts.iter().position(|t| t.contains("number 2")) {
            Some(index) => Err(ProviderError::InvalidInput { index, message: "input too long".into() }),
            None => Ok(()),
        }),
    });
    let s = drain(&url, q.clone(), p, &[]).await;
    assert_eq!((s.processed, s.dead), (3, 1));
    let dead = q.dead_jobs(5).await.unwrap();
    assert_eq!(dead[0].source_id, "j2");
    assert!(dead[0].last_error.as_deref().unwrap_or("").contains("input too long"));
    // Its batch-mates were released unspent and then embedded on their first counted attempt.
    let stored = q.embeddings("scripted", 10).await.unwrap();
    assert_eq!(stored.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_spends_no_attempt() {
    let (q, url, _d) = setup(2).await;
    let p = Arc::new(Scripted {
        calls: AtomicUsize::new(0),
        script: Box::new(|n, _| {
            if n < 5 {
                Err(ProviderError::RateLimited { retry_after: Some(Duration::from_millis(5)) })
            } else {
                Ok(())
            }
        }),
    });
    // Five 429s with MAX_ATTEMPTS=3 would dead-letter if throttling spent attempts.
    let s = drain(&url, q.clone(), p, &[("BATCH_SIZE", "2")]).await;
    assert_eq!((s.processed, s.dead, s.failed), (2, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_dimensions_are_never_stored() {
    struct Bad;
    #[async_trait]
    impl Provider for Bad {
        fn kind(&self) -> ProviderKind {
            ProviderKind::Hash
        }
        fn model(&self) -> &str {
            "bad"
        }
        fn dimensions(&self) -> usize {
            3
        }
        fn max_inputs(&self) -> usize {
            10
        }
        async fn embed(&self, texts: &[&str]) -> Result<Embedded, ProviderError> {
            Ok(Embedded { vectors: texts.iter().map(|_| vec![1.0, f32::NAN]).collect(), tokens: None })
        }
    }
    let (q, url, _d) = setup(2).await;
    let cfg = support::config_at(
        &url,
        &[
            ("RETRY_BASE_DELAY", "1ms"),
            ("RETRY_MAX_DELAY", "2ms"),
            ("MAX_ATTEMPTS", "2"),
            ("QUEUE_POLL_INTERVAL", "10ms"),
        ],
    );
    let w = Worker::new(
        cfg,
        q.clone(),
        Arc::new(Bad),
        Arc::new(Health::new("t".into(), true, Duration::from_secs(30))),
        Arc::new(Metrics::new("t", "hash", "bad")),
    )
    .drain_when_idle(true);
    let s = tokio::time::timeout(Duration::from_secs(60), w.run()).await.unwrap().unwrap();
    assert_eq!((s.processed, s.dead), (0, 2));
    assert!(q.embeddings("bad", 10).await.unwrap().is_empty());
    let dead = q.dead_jobs(5).await.unwrap();
    assert!(dead[0].last_error.as_deref().unwrap_or("").contains("invalid response"), "{dead:?}");
}

/// A store whose first `finish` is refused as invalid; everything else reaches the real store.
struct RefusesOneFinish {
    inner: Arc<dyn Queue>,
    refused: AtomicUsize,
}

#[async_trait]
impl Queue for RefusesOneFinish {
    async fn migrate_with(&self, opts: MigrateOptions) -> Result<MigrateReport, QueueError> {
        self.inner.migrate_with(opts).await
    }
    async fn check_vectors(&self) -> Result<(), QueueError> {
        self.inner.check_vectors().await
    }
    async fn create_index(&self) -> Result<IndexOutcome, QueueError> {
        self.inner.create_index().await
    }
    async fn search(&self, q: &[f32], model: &str, k: usize, st: Option<&str>) -> Result<Search, QueueError> {
        self.inner.search(q, model, k, st).await
    }
    async fn check_schema(&self) -> Result<SchemaFit, QueueError> {
        self.inner.check_schema().await
    }
    async fn prune(&self, req: &PruneRequest, progress: &Progress) -> Result<PruneReport, QueueError> {
        self.inner.prune(req, progress).await
    }
    async fn ping(&self) -> Result<(), QueueError> {
        self.inner.ping().await
    }
    async fn enqueue(&self, jobs: &[NewJob], progress: &Progress) -> Result<EnqueueReport, QueueError> {
        self.inner.enqueue(jobs, progress).await
    }
    async fn claim(
        &self,
        limit: usize,
        lease: &Lease,
        d: Duration,
        model: &str,
    ) -> Result<Vec<ClaimedJob>, QueueError> {
        self.inner.claim(limit, lease, d, model).await
    }
    async fn finish(&self, lease: &Lease, model: &str, o: &[(i64, Outcome)]) -> Result<FinishReport, QueueError> {
        if self.refused.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(QueueError::Invalid("refused on purpose".into()));
        }
        self.inner.finish(lease, model, o).await
    }
    async fn heartbeat(&self, w: &WorkerInfo, leases: &[String], d: Duration) -> Result<u64, QueueError> {
        self.inner.heartbeat(w, leases, d).await
    }
    async fn rescue_expired(&self, max_attempts: u32) -> Result<RescueReport, QueueError> {
        self.inner.rescue_expired(max_attempts).await
    }
    async fn stats(&self) -> Result<QueueStats, QueueError> {
        self.inner.stats().await
    }
    async fn is_idle(&self, within: Duration) -> Result<bool, QueueError> {
        self.inner.is_idle(within).await
    }
    async fn dead_jobs(&self, limit: i64) -> Result<Vec<DeadJob>, QueueError> {
        self.inner.dead_jobs(limit).await
    }
    async fn retry_dead(&self, which: &DeadSelection) -> Result<u64, QueueError> {
        self.inner.retry_dead(which).await
    }
    async fn purge_dead(&self, which: &DeadSelection) -> Result<u64, QueueError> {
        self.inner.purge_dead(which).await
    }
    async fn worker_stopped(&self, w: &WorkerInfo) -> Result<(), QueueError> {
        self.inner.worker_stopped(w).await
    }
    async fn workers(&self) -> Result<Vec<WorkerInfo>, QueueError> {
        self.inner.workers().await
    }
    async fn embeddings(&self, model: &str, limit: i64) -> Result<Vec<StoredEmbedding>, QueueError> {
        self.inner.embeddings(model, limit).await
    }
    async fn listener(&self) -> Option<Box<dyn JobListener>> {
        self.inner.listener().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_results_were_refused_is_rescued_while_its_worker_lives() {
    // The worker gives that batch up; its heartbeats must stop extending the batch's leases,
    // or the jobs would stay "running" for as long as the worker lives (and a drain never ends).
    let (inner, url, _d) = setup(4).await;
    let q: Arc<dyn Queue> = Arc::new(RefusesOneFinish { inner: inner.clone(), refused: AtomicUsize::new(0) });
    let p = Arc::new(Scripted { calls: AtomicUsize::new(0), script: Box::new(|_, _| Ok(())) });
    let s = drain(&url, q, p.clone(), &[("HEARTBEAT_INTERVAL", "200ms")]).await;
    assert_eq!((s.processed, s.dead), (4, 0));
    assert_eq!(p.calls.load(Ordering::SeqCst), 2, "embedded once, refused, rescued and embedded again");
    let stats = inner.stats().await.unwrap();
    assert_eq!((stats.done, stats.running, stats.ready), (4, 0, 0), "{stats:?}");
}
