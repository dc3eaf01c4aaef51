//! A local embedding API for tests: speaks OpenAI's `/v1/embeddings` and Gemini's
//! `:batchEmbedContents`, records every request, answers from a script of canned replies,
//! and, when given budgets, enforces requests and tokens per minute itself (a token bucket
//! that starts full, as OpenAI's does) and answers 429 when a client overspends.
//! [`MockProvider::enforce_window`] enforces them instead as an exact rolling one-minute window.
//! [`MockProvider::count_tokens`] makes it count (and bill) tokens its own way rather than
//! with the client's tokenizer.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use embq::provider::HashProvider;
use embq::tokens::TokenCounter;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// One canned answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Embed normally (the default when the script is empty).
    Embed,
    /// A status, extra headers and a body.
    Status(u16, Vec<(&'static str, String)>, String),
    /// A 2xx body as given.
    Raw(String),
    /// One vector fewer than inputs.
    WrongCount,
    /// Vectors one dimension short.
    WrongDimension,
    /// A NaN in the first vector (base64 can carry one).
    NonFinite,
    /// Never answer (the client must time out).
    Hang,
    /// Answer normally after a delay.
    Slow(Duration),
    /// Close the connection without answering at all (the client sees it reset).
    Reset,
    /// A 200 whose body breaks off halfway: the connection closes mid-body.
    BrokenOff,
    /// A complete 200 whose JSON body is cut in half (framing intact, JSON invalid).
    Truncated,
    /// A 200 of this many bytes (whitespace), chunked, with no declared length.
    Streamed(usize),
}

/// A request as the mock saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Path and query.
    pub path: String,
    /// Headers.
    pub headers: HeaderMap,
    /// JSON body.
    pub body: Value,
    /// Input texts.
    pub inputs: Vec<String>,
    /// Tokens of the inputs, as the mock counts them (cl100k unless told otherwise).
    pub tokens: u64,
    /// Arrival.
    pub at: Instant,
    /// The status answered.
    pub status: u16,
}

/// Requests and tokens per minute the mock enforces.
#[derive(Debug, Clone, Copy)]
pub struct Budgets {
    /// Requests per minute.
    pub rpm: f64,
    /// Tokens per minute.
    pub tpm: f64,
    /// Seconds of budget a full bucket holds (OpenAI: 60).
    pub burst_secs: f64,
}

struct Buckets {
    b: Budgets,
    req: f64,
    tok: f64,
    at: Instant,
}

impl Buckets {
    fn new(b: Budgets) -> Self {
        Self { b, req: b.rpm / 60.0 * b.burst_secs, tok: b.tpm / 60.0 * b.burst_secs, at: Instant::now() }
    }
    fn refill(&mut self) {
        let now = Instant::now();
        let dt = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.req = (self.req + self.b.rpm / 60.0 * dt).min(self.b.rpm / 60.0 * self.b.burst_secs);
        self.tok = (self.tok + self.b.tpm / 60.0 * dt).min(self.b.tpm / 60.0 * self.b.burst_secs);
    }
    /// Takes the request or says how long until it would fit.
    fn take(&mut self, tokens: f64) -> Result<(), Duration> {
        self.refill();
        let cap_tok = self.b.tpm / 60.0 * self.b.burst_secs;
        let need_tok = tokens.min(cap_tok);
        if self.req >= 1.0 && self.tok >= need_tok {
            self.req -= 1.0;
            self.tok -= tokens;
            return Ok(());
        }
        let wait_req = ((1.0 - self.req) / (self.b.rpm / 60.0)).max(0.0);
        let wait_tok = ((need_tok - self.tok) / (self.b.tpm / 60.0)).max(0.0);
        Err(Duration::from_secs_f64(wait_req.max(wait_tok)))
    }
    fn headers(&self) -> Vec<(&'static str, String)> {
        let reset = |level: f64, per_min: f64| {
            let cap = per_min / 60.0 * self.b.burst_secs;
            format!("{}ms", (((cap - level).max(0.0)) / (per_min / 60.0) * 1000.0).ceil() as u64)
        };
        vec![
            ("x-ratelimit-limit-requests", format!("{}", self.b.rpm as u64)),
            ("x-ratelimit-limit-tokens", format!("{}", self.b.tpm as u64)),
            ("x-ratelimit-remaining-requests", format!("{}", self.req.max(0.0).floor() as u64)),
            ("x-ratelimit-remaining-tokens", format!("{}", self.tok.max(0.0).floor() as u64)),
            ("x-ratelimit-reset-requests", reset(self.req, self.b.rpm)),
            ("x-ratelimit-reset-tokens", reset(self.tok, self.b.tpm)),
        ]
    }
}

/// Requests and tokens per minute enforced as an exact rolling window: a request is admitted
/// only if what was admitted in the last 60 s (exact arrival times), plus this request, stays
/// within both limits. The window starts empty, so a whole minute's worth may go at once.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Requests per minute.
    pub rpm: f64,
    /// Tokens per minute.
    pub tpm: f64,
}

/// Response headers, (name, value).
type Headers = Vec<(&'static str, String)>;

/// The admitted requests of the last minute: (arrival, tokens), oldest first.
struct SlidingWindow {
    w: Window,
    admitted: VecDeque<(Instant, f64)>,
    tokens: f64,
}

impl SlidingWindow {
    const SPAN: Duration = Duration::from_secs(60);

    fn new(w: Window) -> Self {
        Self { w, admitted: VecDeque::new(), tokens: 0.0 }
    }

    fn prune(&mut self, now: Instant) {
        while let Some(&(at, t)) = self.admitted.front() {
            if at + Self::SPAN > now {
                break;
            }
            self.admitted.pop_front();
            self.tokens -= t;
        }
        if self.admitted.is_empty() {
            self.tokens = 0.0;
        }
    }

    /// Until `over` requests (or tokens) have left the window.
    fn until_freed(&self, now: Instant, over: f64, tokens: bool) -> Duration {
        if over <= 0.0 {
            return Duration::ZERO;
        }
        let mut freed = 0.0;
        for &(at, t) in &self.admitted {
            freed += if tokens { t } else { 1.0 };
            if freed >= over {
                return (at + Self::SPAN).saturating_duration_since(now);
            }
        }
        Self::SPAN
    }

    /// Admits the request (its headers) or refuses it (the 429's headers).
    fn take(&mut self, tokens: f64) -> Result<Headers, Headers> {
        let now = Instant::now();
        self.prune(now);
        let over_req = self.admitted.len() as f64 + 1.0 - self.w.rpm;
        let over_tok = self.tokens + tokens - self.w.tpm;
        if over_req <= 0.0 && over_tok <= 0.0 {
            self.admitted.push_back((now, tokens));
            self.tokens += tokens;
            return Ok(self.headers(now, None));
        }
        let (req, tok) = (self.until_freed(now, over_req, false), self.until_freed(now, over_tok, true));
        let mut h = self.headers(now, Some((req, tok)));
        h.push(("retry-after-ms", req.max(tok).as_millis().max(1).to_string()));
        Err(h)
    }

    /// Remaining budgets; resets: until the oldest admitted request leaves the window (budget
    /// comes back), or on a 429 until enough has left for the refused request.
    fn headers(&self, now: Instant, refused: Option<(Duration, Duration)>) -> Headers {
        let next = self.admitted.front().map(|&(at, _)| (at + Self::SPAN).saturating_duration_since(now));
        let next = next.unwrap_or(Duration::ZERO);
        let (req, tok) = match refused {
            Some((r, t)) => (r.max(next), t.max(next)),
            None => (next, next),
        };
        let ms = |d: Duration| format!("{}ms", (d.as_secs_f64() * 1000.0).ceil() as u64);
        vec![
            ("x-ratelimit-limit-requests", format!("{}", self.w.rpm as u64)),
            ("x-ratelimit-limit-tokens", format!("{}", self.w.tpm as u64)),
            (
                "x-ratelimit-remaining-requests",
                format!("{}", (self.w.rpm - self.admitted.len() as f64).max(0.0) as u64),
            ),
            ("x-ratelimit-remaining-tokens", format!("{}", (self.w.tpm - self.tokens).max(0.0).floor() as u64)),
            ("x-ratelimit-reset-requests", ms(req)),
            ("x-ratelimit-reset-tokens", ms(tok)),
        ]
    }
}

/// How the mock counts the tokens it enforces and bills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerTokens {
    /// cl100k, as the client counts.
    #[default]
    Tiktoken,
    /// ceil(characters / 4) per input: a server with its own count.
    CharsOverFour,
}

impl ServerTokens {
    fn count(self, inputs: &[String]) -> u64 {
        match self {
            ServerTokens::Tiktoken => {
                let counter = TokenCounter::for_openai_model("text-embedding-3-small");
                inputs.iter().map(|t| counter.count(t) as u64).sum()
            }
            ServerTokens::CharsOverFour => inputs.iter().map(|t| t.chars().count().div_ceil(4) as u64).sum(),
        }
    }
}

/// Picks a reply from a request's inputs.
type Rule = Box<dyn Fn(&[String]) -> Reply + Send + Sync>;

/// The mock's shared state.
pub struct State {
    dims: usize,
    script: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
    buckets: Mutex<Option<Buckets>>,
    window: Mutex<Option<SlidingWindow>>,
    /// Called for each request to pick a reply when the script is empty (inputs -> reply).
    rule: Mutex<Option<Rule>>,
    /// How tokens are counted for the limits and `usage`.
    counter: Mutex<ServerTokens>,
    /// Enforce the limits but send no `x-ratelimit-*` headers (a 429 keeps its `retry-after-ms`).
    quiet: std::sync::atomic::AtomicBool,
}

/// A running mock.
pub struct MockProvider {
    /// `http://127.0.0.1:port`
    pub url: String,
    state: Arc<State>,
    stop: CancellationToken,
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl MockProvider {
    /// Starts a mock producing `dims`-dimensional vectors.
    pub async fn start(dims: usize) -> Self {
        let state = Arc::new(State {
            dims,
            script: Mutex::new(VecDeque::new()),
            seen: Mutex::new(Vec::new()),
            buckets: Mutex::new(None),
            window: Mutex::new(None),
            rule: Mutex::new(None),
            counter: Mutex::new(ServerTokens::default()),
            quiet: std::sync::atomic::AtomicBool::new(false),
        });
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("bind mock");
        let addr = listener.local_addr().expect("mock address");
        let stop = CancellationToken::new();
        let s = state.clone();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let s = s.clone();
            async move { handle(s, method, uri, headers, body).await }
        });
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(async move { stopped.cancelled().await }).await;
        });
        Self { url: format!("http://{addr}"), state, stop }
    }

    /// Queues canned replies for the next requests, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    /// Picks replies by the request's inputs once the script is used up.
    pub fn rule(&self, f: impl Fn(&[String]) -> Reply + Send + Sync + 'static) {
        *self.state.rule.lock().unwrap() = Some(Box::new(f));
    }

    /// Enforces budgets from now on.
    pub fn enforce(&self, b: Budgets) {
        *self.state.buckets.lock().unwrap() = Some(Buckets::new(b));
    }

    /// Enforces budgets as an exact rolling one-minute window from now on (instead of buckets).
    pub fn enforce_window(&self, w: Window) {
        *self.state.buckets.lock().unwrap() = None;
        *self.state.window.lock().unwrap() = Some(SlidingWindow::new(w));
    }

    /// Counts (enforces and bills) tokens this way from now on.
    pub fn count_tokens(&self, c: ServerTokens) {
        *self.state.counter.lock().unwrap() = c;
    }

    /// Sends no `x-ratelimit-*` headers from now on, though it still enforces its limits.
    pub fn hide_rate_headers(&self) {
        self.state.quiet.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests answered with this status.
    pub fn count_status(&self, status: u16) -> usize {
        self.state.seen.lock().unwrap().iter().filter(|s| s.status == status).count()
    }
}

fn b64(v: &[f32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(embq::vector::to_le_bytes(v))
}

async fn handle(s: Arc<State>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let gemini = path.contains(":batchEmbedContents");
    let inputs: Vec<String> = if gemini {
        body["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r["content"]["parts"][0]["text"].as_str().unwrap_or_default().to_string())
            .collect()
    } else {
        body["input"].as_array().into_iter().flatten().map(|t| t.as_str().unwrap_or_default().to_string()).collect()
    };
    let tokens = s.counter.lock().unwrap().count(&inputs);
    let reply = {
        let scripted = s.script.lock().unwrap().pop_front();
        scripted.unwrap_or_else(|| s.rule.lock().unwrap().as_ref().map(|f| f(&inputs)).unwrap_or(Reply::Embed))
    };
    let mut extra: Vec<(&'static str, String)> = Vec::new();
    let mut reply = if method != Method::POST { Reply::Status(405, vec![], "{}".into()) } else { reply };
    if matches!(reply, Reply::Embed) {
        if let Some(b) = s.buckets.lock().unwrap().as_mut() {
            match b.take(tokens as f64) {
                Ok(()) => extra = b.headers(),
                Err(wait) => {
                    let mut h = b.headers();
                    h.push(("retry-after-ms", wait.as_millis().max(1).to_string()));
                    let body = json!({"error": {"message": "Rate limit reached", "type": "tokens",
                        "code": "rate_limit_exceeded"}});
                    reply = Reply::Status(429, h, body.to_string());
                }
            }
        }
    }
    if matches!(reply, Reply::Embed) {
        if let Some(w) = s.window.lock().unwrap().as_mut() {
            match w.take(tokens as f64) {
                Ok(h) => extra = h,
                Err(h) => {
                    let body = json!({"error": {"message": "Rate limit reached", "type": "requests",
                        "code": "rate_limit_exceeded"}});
                    reply = Reply::Status(429, h, body.to_string());
                }
            }
        }
    }
    if s.quiet.load(std::sync::atomic::Ordering::Relaxed) {
        extra.retain(|(k, _)| !k.starts_with("x-ratelimit-"));
        if let Reply::Status(_, h, _) = &mut reply {
            h.retain(|(k, _)| !k.starts_with("x-ratelimit-"));
        }
    }
    let (status, headers_out, text) = match reply {
        Reply::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Reply::Slow(d) => {
            tokio::time::sleep(d).await;
            (200, extra, embed_body(&s, &body, &inputs, tokens, gemini, 0))
        }
        Reply::Embed => (200, extra, embed_body(&s, &body, &inputs, tokens, gemini, 0)),
        Reply::WrongCount => (200, extra, embed_body(&s, &body, &inputs[1.min(inputs.len())..], tokens, gemini, 0)),
        Reply::WrongDimension => (200, extra, embed_body(&s, &body, &inputs, tokens, gemini, 1)),
        Reply::NonFinite => {
            let mut v = vec![0.5f32; s.dims];
            v[0] = f32::NAN;
            let data: Vec<Value> =
                inputs.iter().enumerate().map(|(i, _)| json!({"index": i, "embedding": b64(&v)})).collect();
            (200, extra, json!({"data": data, "usage": {"prompt_tokens": tokens}}).to_string())
        }
        Reply::Raw(b) => (200, extra, b),
        Reply::Streamed(n) => {
            s.seen.lock().unwrap().push(Seen { path, headers, body, inputs, tokens, at: Instant::now(), status: 200 });
            let chunk = Bytes::from(vec![b' '; 64 << 10]);
            let chunks = (0..n.div_ceil(64 << 10)).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
            let mut resp = axum::body::Body::from_stream(futures::stream::iter(chunks)).into_response();
            resp.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
            return resp;
        }
        Reply::Status(code, h, b) => (code, h, b),
        Reply::Truncated => {
            let full = embed_body(&s, &body, &inputs, tokens, gemini, 0);
            (200, extra, half(&full).to_string())
        }
        Reply::Reset => {
            s.seen.lock().unwrap().push(Seen { path, headers, body, inputs, tokens, at: Instant::now(), status: 0 });
            return broken(None);
        }
        Reply::BrokenOff => {
            let full = embed_body(&s, &body, &inputs, tokens, gemini, 0);
            s.seen.lock().unwrap().push(Seen { path, headers, body, inputs, tokens, at: Instant::now(), status: 200 });
            return broken(Some(half(&full).to_string()));
        }
    };
    s.seen.lock().unwrap().push(Seen { path, headers, body, inputs, tokens, at: Instant::now(), status });
    let mut resp = (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), text).into_response();
    resp.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    for (k, v) in headers_out {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v)) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

fn embed_body(s: &State, req: &Value, inputs: &[String], tokens: u64, gemini: bool, short: usize) -> String {
    let hash = HashProvider::new("mock", s.dims);
    let dims = s.dims - short;
    if gemini {
        let e: Vec<Value> = inputs.iter().map(|t| json!({"values": hash.vector(t)[..dims].to_vec()})).collect();
        return json!({ "embeddings": e }).to_string();
    }
    let base64 = req["encoding_format"] == "base64";
    // Answer in reverse order: clients must sort by `index`.
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .rev()
        .map(|(i, t)| {
            let v = hash.vector(t)[..dims].to_vec();
            let e = if base64 { Value::String(b64(&v)) } else { json!(v) };
            json!({"object": "embedding", "index": i, "embedding": e})
        })
        .collect();
    json!({"object": "list", "data": data, "model": req["model"],
           "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
    .to_string()
}

/// The first half of a body, cut on a character boundary.
fn half(s: &str) -> &str {
    let mut end = s.len() / 2;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A response whose connection breaks: with no prefix before anything is sent (the body
/// fails on its first poll, before the status line is flushed), else after the prefix.
fn broken(prefix: Option<String>) -> Response {
    use futures::StreamExt;
    let cut = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "mock: connection cut");
    let body = match prefix {
        None => axum::body::Body::from_stream(futures::stream::once(async move { Err::<Bytes, _>(cut()) })),
        Some(p) => axum::body::Body::from_stream(
            futures::stream::once(async move { Ok::<Bytes, std::io::Error>(Bytes::from(p)) }).chain(
                futures::stream::once(async move {
                    // Let the prefix reach the client before the connection goes.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Err(cut())
                }),
            ),
        ),
    };
    let mut resp = Response::new(body);
    resp.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    resp
}
