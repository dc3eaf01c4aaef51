//! A local embedding API for tests: speaks OpenAI's `/v1/embeddings` and Gemini's
//! `:batchEmbedContents`, records every request, answers from a script of canned replies,
//! and, when given budgets, enforces requests and tokens per minute itself (a token bucket
//! that starts full, as OpenAI's does) and answers 429 when a client overspends.
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
    /// Tokens (cl100k) of the inputs.
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

/// Picks a reply from a request's inputs.
type Rule = Box<dyn Fn(&[String]) -> Reply + Send + Sync>;

/// The mock's shared state.
pub struct State {
    dims: usize,
    script: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
    buckets: Mutex<Option<Buckets>>,
    /// Called for each request to pick a reply when the script is empty (inputs -> reply).
    rule: Mutex<Option<Rule>>,
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
            rule: Mutex::new(None),
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
    let counter = TokenCounter::for_openai_model("text-embedding-3-small");
    let tokens: u64 = inputs.iter().map(|t| counter.count(t) as u64).sum();
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
        Reply::Status(code, h, b) => (code, h, b),
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
