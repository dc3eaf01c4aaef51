//! The provider fault matrix: a real worker on SQLite drains a backlog through the OpenAI
//! provider against a local mock that injects, request by request, bursts of 429 (with
//! `retry-after`, `retry-after-ms` and no hint), 500/502/503, timeouts, connection resets,
//! bodies that break off, truncated JSON, wrong dimensions, and a 400 naming one input as
//! too long. Every test checks the same ledger against what the mock served: no panic;
//! every good job done exactly once with the right vector; 429s spend no attempt, every
//! other fault exactly one; only the bad inputs dead-lettered, with their error; and the
//! worker's metrics count exactly the requests, errors and outcomes that happened.

mod support;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use embq::metrics::Metrics;
use embq::provider::HashProvider;
use embq::queue::Queue;
use serde_json::json;
use sqlx::Row;
use support::mock_provider::{MockProvider, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DIMS: usize = 8;
/// PROVIDER_TIMEOUT of these workers.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Texts starting with this are refused as too long, the way OpenAI refuses them.
const POISON: &str = "poison";

/// One fault the mock can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// 429 with `retry-after: 1` (seconds).
    Throttled,
    /// 429 with `retry-after-ms: 150`, as OpenAI sends it.
    ThrottledMs,
    /// 429 with no hint at all.
    ThrottledBare,
    /// This 5xx status with an HTML body.
    Server(u16),
    /// The answer comes after the client's timeout.
    Timeout,
    /// The connection closes without an answer.
    Reset,
    /// A 200 whose body breaks off with the connection.
    BrokenOff,
    /// A complete 200 whose JSON is cut in half.
    Truncated,
    /// Every vector one dimension short.
    WrongDimension,
}

use Fault::*;

/// What the mock did with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Served {
    Embedded,
    Fault(Fault),
    /// 400 "maximum context length" because a poison input is in the request.
    Rejected,
}

impl Served {
    fn reply(self) -> Reply {
        let throttle = |h: Vec<(&'static str, String)>| {
            let body = json!({"error": {"message": "Rate limit reached for requests", "type": "requests",
                "code": "rate_limit_exceeded", "param": null}});
            Reply::Status(429, h, body.to_string())
        };
        match self {
            Served::Embedded => Reply::Embed,
            Served::Rejected => {
                let body = json!({"error": {"message": "This model's maximum context length is 8192 tokens, \
                    however you requested 9000 tokens. Please reduce your prompt.",
                    "type": "invalid_request_error", "code": null, "param": null}});
                Reply::Status(400, vec![], body.to_string())
            }
            Served::Fault(Throttled) => throttle(vec![("retry-after", "1".into())]),
            Served::Fault(ThrottledMs) => throttle(vec![("retry-after-ms", "150".into())]),
            Served::Fault(ThrottledBare) => throttle(vec![]),
            Served::Fault(Server(code)) => Reply::Status(code, vec![], format!("<html>{code} upstream</html>")),
            Served::Fault(Timeout) => Reply::Slow(TIMEOUT + Duration::from_millis(600)),
            Served::Fault(Reset) => Reply::Reset,
            Served::Fault(BrokenOff) => Reply::BrokenOff,
            Served::Fault(Truncated) => Reply::Truncated,
            Served::Fault(WrongDimension) => Reply::WrongDimension,
        }
    }

    /// True when the worker must spend an attempt on every job of the request.
    fn spends_attempt(self) -> bool {
        matches!(self, Served::Fault(f) if !matches!(f, Throttled | ThrottledMs | ThrottledBare))
    }

    fn throttled(self) -> bool {
        matches!(self, Served::Fault(Throttled | ThrottledMs | ThrottledBare))
    }

    /// `status_class` label the worker must count it under.
    fn status_class(self) -> &'static str {
        match self {
            Served::Embedded | Served::Fault(Truncated | WrongDimension) => "2xx",
            Served::Rejected => "4xx",
            s if s.throttled() => "429",
            _ => "5xx",
        }
    }

    /// `kind` label of the worker error it must count, if any.
    fn error_kind(self, inputs: usize) -> Option<&'static str> {
        match self {
            Served::Embedded => None,
            Served::Rejected if inputs > 1 => Some("too_large"),
            Served::Rejected => Some("invalid_input"),
            Served::Fault(Truncated | WrongDimension) => Some("invalid_response"),
            s if s.throttled() => Some("rate_limited"),
            _ => Some("transient"),
        }
    }
}

/// One request as the mock served it.
#[derive(Clone, Debug)]
struct Request {
    inputs: Vec<String>,
    served: Served,
}

/// Panics seen by each test thread (a worker panic would otherwise only lose a batch).
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn watch_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current().name().unwrap_or("?").to_string();
            PANICS.lock().unwrap_or_else(|p| p.into_inner()).push(thread);
            previous(info);
        }));
    });
}

fn panics_on_this_thread() -> usize {
    let me = std::thread::current().name().unwrap_or("?").to_string();
    PANICS.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|t| **t == me).count()
}

/// The scenario: the faults served to the first requests, in order (`None` = answer
/// normally), the backlog, and the worker's settings.
struct Scenario {
    plan: Vec<Option<Fault>>,
    good: usize,
    bad: usize,
    max_attempts: u32,
    batch_size: usize,
    concurrency: usize,
}

impl Scenario {
    fn new(plan: Vec<Option<Fault>>, good: usize) -> Self {
        Self { plan, good, bad: 0, max_attempts: 10, batch_size: 4, concurrency: 2 }
    }
}

fn text(i: usize, bad: bool) -> String {
    if bad {
        format!("{POISON} input {i}")
    } else {
        format!("receipt {i} from the corner coffee shop")
    }
}

/// Runs the scenario to the end and checks the whole ledger; returns the requests served.
async fn run(sc: Scenario) -> Vec<Request> {
    watch_panics();
    let mock = MockProvider::start(DIMS).await;
    let plan: Arc<Mutex<VecDeque<Option<Fault>>>> = Arc::new(Mutex::new(sc.plan.iter().copied().collect()));
    let log: Arc<Mutex<Vec<Request>>> = Arc::default();
    {
        let (plan, log) = (plan.clone(), log.clone());
        mock.rule(move |inputs| {
            let served = if inputs.iter().any(|t| t.starts_with(POISON)) {
                Served::Rejected
            } else {
                match plan.lock().unwrap().pop_front().flatten() {
                    Some(f) => Served::Fault(f),
                    None => Served::Embedded,
                }
            };
            log.lock().unwrap().push(Request { inputs: inputs.to_vec(), served });
            served.reply()
        });
    }

    let dir = tempfile::tempdir().unwrap();
    let (attempts, batch, conc) = (sc.max_attempts.to_string(), sc.batch_size.to_string(), sc.concurrency.to_string());
    let timeout = format!("{}ms", TIMEOUT.as_millis());
    let cfg = support::openai_config(
        &dir,
        &mock.url,
        &[
            ("PROVIDER_TIMEOUT", &timeout),
            ("MAX_ATTEMPTS", &attempts),
            ("BATCH_SIZE", &batch),
            ("MAX_CONCURRENT_JOBS", &conc),
        ],
    );
    let n = sc.good + sc.bad;
    // Poison jobs are spread through the backlog.
    let is_bad = |i: usize| sc.bad > 0 && i % (n / sc.bad) == n / sc.bad - 1 && i / (n / sc.bad) < sc.bad;
    let texts: Vec<String> = (0..n).map(|i| text(i, is_bad(i))).collect();
    assert_eq!(texts.iter().filter(|t| t.starts_with(POISON)).count(), sc.bad);
    let q = support::queue_with(&cfg, &support::jobs(n, |i| texts[i].clone())).await;

    let h = support::harness(&cfg, q.clone(), None);
    let (health, metrics) = (h.health.clone(), h.metrics.clone());
    let worker = tokio::spawn(h.worker.drain_when_idle(false).run());
    support::wait_until(Duration::from_secs(25), "every job done or dead-lettered", || {
        let q = q.clone();
        async move { q.stats().await.is_ok_and(|s| s.done + s.dead == n as u64 && s.running == 0) }
    })
    .await;
    health.shutdown.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("worker stopped in time")
        .expect("worker task did not panic")
        .expect("worker ran");

    let log = log.lock().unwrap().clone();
    assert!(plan.lock().unwrap().is_empty(), "every planned fault was served: {log:#?}");
    assert_eq!(panics_on_this_thread(), 0, "something panicked");
    assert_eq!((summary.processed, summary.dead), (sc.good as u64, sc.bad as u64), "{summary:?}");
    check_jobs(&cfg, q.as_ref(), &texts, &log).await;
    check_metrics(&metrics, &log, sc.good, sc.bad);
    log
}

/// The requests that carried text `t`.
fn served_to<'a>(log: &'a [Request], t: &'a str) -> impl Iterator<Item = &'a Request> + 'a {
    log.iter().filter(move |r| r.inputs.iter().any(|i| i == t))
}

/// Every job's end state, attempts and vector against what the mock served it.
async fn check_jobs(cfg: &embq::config::Config, q: &dyn Queue, texts: &[String], log: &[Request]) {
    let db = sqlx::SqlitePool::connect(cfg.database_url.expose()).await.unwrap();
    let rows = sqlx::query("SELECT source_id, state, attempts, last_error FROM jobs ORDER BY id")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(rows.len(), texts.len());
    for row in rows {
        let id: usize = row.get::<String, _>("source_id").parse().unwrap();
        let (state, attempts): (String, i64) = (row.get("state"), row.get("attempts"));
        let last_error: Option<String> = row.get("last_error");
        let t = texts[id].as_str();
        // 429s refund the attempt their claim took; every other fault spends exactly one.
        let spent = served_to(log, t).filter(|r| r.served.spends_attempt()).count() as i64;
        let ok = served_to(log, t).filter(|r| r.served == Served::Embedded).count();
        if t.starts_with(POISON) {
            assert_eq!(state, "dead", "{t}");
            assert_eq!(ok, 0, "{t}");
            assert_eq!(attempts, spent + 1, "{t}: attempts");
            let e = last_error.unwrap_or_default();
            assert!(e.contains("input rejected") && e.contains("maximum context length"), "{t}: {e}");
        } else {
            assert_eq!(state, "done", "{t}");
            assert_eq!(ok, 1, "{t} was embedded exactly once");
            assert_eq!(attempts, spent + 1, "{t}: attempts");
        }
    }
    db.close().await;
    let hash = HashProvider::new("mock", DIMS);
    let stored = q.embeddings(&cfg.model, 10_000).await.unwrap();
    let good: Vec<&String> = texts.iter().filter(|t| !t.starts_with(POISON)).collect();
    assert_eq!(stored.len(), good.len(), "one embedding per good job");
    let by_id: HashMap<usize, &Vec<f32>> = stored.iter().map(|e| (e.source_id.parse().unwrap(), &e.vector)).collect();
    for (id, t) in texts.iter().enumerate().filter(|(_, t)| !t.starts_with(POISON)) {
        let v = by_id.get(&id).unwrap_or_else(|| panic!("no embedding for {t}"));
        assert_eq!(v.len(), DIMS);
        assert_eq!(**v, hash.vector(t), "{t}");
    }
}

fn sample(m: &Metrics, s: &str) -> u64 {
    support::metric(m, s) as u64
}

/// The worker's Prometheus counters against the mock's log.
fn check_metrics(m: &Metrics, log: &[Request], good: usize, bad: usize) {
    let count = |f: &dyn Fn(&Request) -> bool| log.iter().filter(|r| f(r)).count() as u64;
    let jobs = |f: &dyn Fn(&Request) -> bool| log.iter().filter(|r| f(r)).map(|r| r.inputs.len() as u64).sum::<u64>();
    let text = m.encode();
    for class in ["2xx", "4xx", "429", "5xx"] {
        let want = count(&|r| r.served.status_class() == class);
        let s = format!("embedding_provider_requests_total{{provider=\"openai\",status_class=\"{class}\"}}");
        assert_eq!(sample(m, &s), want, "{s}\n{text}");
    }
    let throttled = count(&|r| r.served.throttled());
    assert_eq!(sample(m, "embedding_provider_rate_limited_total{provider=\"openai\"}"), throttled, "{text}");
    for kind in ["rate_limited", "transient", "invalid_response", "too_large", "invalid_input"] {
        let want = count(&|r| r.served.error_kind(r.inputs.len()) == Some(kind));
        let s = format!("embedding_worker_errors_total{{kind=\"{kind}\"}}");
        assert_eq!(sample(m, &s), want, "{s}\n{text}");
    }
    let retried = jobs(&|r| r.served.spends_attempt());
    assert_eq!(sample(m, "embedding_jobs_processed_total"), good as u64, "{text}");
    assert_eq!(sample(m, "embedding_jobs_dead_lettered_total"), bad as u64, "{text}");
    assert_eq!(sample(m, "embedding_jobs_retried_total"), retried, "{text}");
    assert_eq!(sample(m, "embedding_jobs_failed_total"), retried + bad as u64, "{text}");
    assert_eq!(sample(m, "embedding_jobs_released_total"), jobs(&|r| r.served.throttled()), "{text}");
    assert_eq!(sample(m, "embedding_lease_lost_total"), 0, "{text}");
}

fn faults(f: &[Fault]) -> Vec<Option<Fault>> {
    f.iter().map(|f| Some(*f)).collect()
}

// ---- the matrix ----

#[tokio::test]
async fn bursts_of_429_spend_no_attempt() {
    // MAX_ATTEMPTS=1: a 429 that spent the attempt would dead-letter its jobs.
    let mut sc =
        Scenario::new(faults(&[Throttled, ThrottledMs, ThrottledMs, ThrottledBare, ThrottledMs, ThrottledMs]), 12);
    sc.max_attempts = 1;
    let log = run(sc).await;
    assert_eq!(log.iter().filter(|r| r.served.throttled()).count(), 6);
}

#[tokio::test]
async fn server_errors_retry_and_succeed() {
    let log = run(Scenario::new(faults(&[Server(500), Server(502), Server(503), Server(503)]), 12)).await;
    assert_eq!(log.iter().filter(|r| r.served.spends_attempt()).count(), 4);
}

#[tokio::test]
async fn timeouts_retry_and_succeed() {
    run(Scenario::new(faults(&[Timeout, Timeout]), 8)).await;
}

#[tokio::test]
async fn resets_and_broken_bodies_retry_and_succeed() {
    run(Scenario::new(faults(&[Reset, BrokenOff, Reset, BrokenOff]), 8)).await;
}

#[tokio::test]
async fn truncated_json_and_wrong_dimensions_retry_and_succeed() {
    run(Scenario::new(faults(&[Truncated, WrongDimension, Truncated]), 8)).await;
}

#[tokio::test]
async fn only_the_truly_bad_inputs_are_dead_lettered() {
    let mut sc = Scenario::new(vec![], 14);
    sc.bad = 2;
    let log = run(sc).await;
    // Each poison input was split out of its batch and refused on its own.
    assert_eq!(log.iter().filter(|r| r.served == Served::Rejected && r.inputs.len() == 1).count(), 2);
}

#[tokio::test]
async fn every_fault_at_once_over_a_backlog() {
    let plan = vec![
        Some(Throttled),
        Some(ThrottledMs),
        None,
        Some(Server(500)),
        Some(Timeout),
        None,
        Some(Server(502)),
        Some(Reset),
        Some(ThrottledBare),
        None,
        Some(Truncated),
        Some(Server(503)),
        None,
        Some(WrongDimension),
        Some(BrokenOff),
        Some(ThrottledMs),
        Some(ThrottledMs),
        None,
        Some(Server(503)),
    ];
    let mut sc = Scenario::new(plan, 57);
    sc.bad = 3;
    sc.concurrency = 3;
    let log = run(sc).await;
    assert_eq!(log.iter().filter(|r| r.served == Served::Rejected && r.inputs.len() == 1).count(), 3);
}

// ---- the mock's own faults, seen from the wire and from the provider ----

async fn raw_post(url: &str) -> Vec<u8> {
    let addr = url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = r#"{"model":"m","input":["a","b"],"encoding_format":"float"}"#;
    let req = format!(
        "POST /v1/embeddings HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("connection closed");
    out
}

#[tokio::test]
async fn the_mock_faults_are_what_they_claim() {
    let mock = MockProvider::start(DIMS).await;
    // Reset: not one byte comes back.
    mock.script([Reply::Reset]);
    assert!(raw_post(&mock.url).await.is_empty());
    // Broken off: a 200 head and part of a body, then the connection goes.
    mock.script([Reply::BrokenOff]);
    let got = String::from_utf8_lossy(&raw_post(&mock.url).await).to_string();
    assert!(got.starts_with("HTTP/1.1 200") && got.contains("\"data\"") && !got.ends_with("0\r\n\r\n"), "{got}");
    // Truncated: a complete response whose JSON stops halfway.
    mock.script([Reply::Truncated]);
    let got = String::from_utf8_lossy(&raw_post(&mock.url).await).to_string();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");

    let dir = tempfile::tempdir().unwrap();
    let timeout = format!("{}ms", TIMEOUT.as_millis());
    let cfg = support::openai_config(&dir, &mock.url, &[("PROVIDER_TIMEOUT", &timeout)]);
    let p = cfg.provider().unwrap();
    for (served, kind, says) in [
        (Served::Fault(Reset), "transient", ""),
        (Served::Fault(BrokenOff), "transient", "body"),
        (Served::Fault(Timeout), "transient", "timed out"),
        (Served::Fault(Truncated), "invalid_response", "malformed JSON"),
        (Served::Fault(WrongDimension), "invalid_response", "dimensions"),
        (Served::Fault(Server(502)), "transient", "502"),
        (Served::Fault(ThrottledBare), "rate_limited", ""),
        (Served::Rejected, "invalid_input", "maximum context length"),
    ] {
        mock.script([served.reply()]);
        let inputs: &[&str] = if served == Served::Rejected { &["x"] } else { &["x", "y"] };
        let err = p.embed(inputs).await.expect_err(&format!("{served:?}"));
        assert_eq!(err.kind(), kind, "{served:?}: {err}");
        assert!(err.to_string().contains(says), "{served:?}: {err}");
    }
    // After all that, the same client still works.
    assert_eq!(p.embed(&["x"]).await.unwrap().vectors, vec![HashProvider::new("mock", DIMS).vector("x")]);
}
