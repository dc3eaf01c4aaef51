//! A local OpenAI Batch API for tests: files (`POST /v1/files` multipart with `purpose=batch`,
//! list, content, delete), batches (create, get, list) and, for online jobs, `/v1/embeddings`.
//!
//! It validates every request as the real API does and records each violation (answered with
//! 400): the bearer key, multipart with `purpose=batch` and a named file, JSONL whose every
//! line has a unique `custom_id`, `method` POST, `url` /v1/embeddings and a body with a model
//! and non-empty input, one model per file, a `.jsonl` name, at most 50,000 lines and 200 MB; a batch's
//! `input_file_id` (an uploaded batch file), `endpoint` and `completion_window`.
//!
//! Batches stay `in_progress` until the test ends them (`end_all`), or end on their first poll
//! with `auto_end`. Lines whose text a rule picks fail with a status; an upload or a create can
//! be done but answered 500, as if the answer was lost. No sleeps: state moves only when the
//! test or a request moves it.
#![allow(dead_code)]

mod requests;
mod results;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use requests::{check_jsonl, multipart};
use results::{embedding_body, end};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// The key the mock accepts.
pub const KEY: &str = "sk-batch-test";
const MAX_LINES: usize = 50_000;
const MAX_BYTES: usize = 200 * 1000 * 1000;

/// How a batch ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every line answered (failing lines in the error file).
    Complete,
    /// Only the first `n` lines answered; the rest reported `batch_expired`.
    Expire(usize),
    /// Failed validation: no line answered.
    Fail,
    /// Refused for the organisation's enqueued-token limit (`token_limit_exceeded`).
    OverLimit,
    /// Cancelled after the first `n` lines were answered; the rest reported `batch_cancelled`.
    Cancel(usize),
}

/// Picks a failure status for a line's text, or `None` to embed it.
type LineRule = Box<dyn Fn(&str) -> Option<u16> + Send + Sync>;

struct File {
    filename: String,
    purpose: &'static str,
    bytes: Vec<u8>,
}

struct Batch {
    id: String,
    status: &'static str,
    input_file_id: String,
    metadata: Value,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
    /// `errors.data` of a failed batch.
    errors: Option<Value>,
    total: usize,
    completed: usize,
    failed: usize,
}

#[derive(Default)]
struct Inner {
    next: u64,
    files: BTreeMap<String, File>,
    /// In creation order.
    batches: Vec<Batch>,
    uploads: usize,
    deletes: usize,
    violations: Vec<String>,
    auto_end: Option<Ending>,
    line_rule: Option<LineRule>,
    /// Texts embedded online (`/v1/embeddings`).
    online: Vec<String>,
    /// Tokens billed in output lines.
    billed: u64,
    /// The most batches running at once.
    max_running: usize,
    /// The next upload / create is done but answered 500, as if the answer was lost on the way.
    lose_upload_answer: bool,
    lose_create_answer: bool,
    /// The next upload is refused (400) as a file the API will not take.
    refuse_upload: bool,
}

impl Inner {
    fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}-{:06}", self.next)
    }
}

/// A running mock Batch API.
pub struct MockBatchApi {
    /// `http://127.0.0.1:port`
    pub url: String,
    dims: usize,
    inner: Arc<Mutex<Inner>>,
    stop: CancellationToken,
}

impl Drop for MockBatchApi {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl MockBatchApi {
    /// Starts a mock answering with `dims`-dimensional vectors.
    pub async fn start(dims: usize) -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("bind mock");
        let addr = listener.local_addr().expect("mock address");
        let stop = CancellationToken::new();
        let s = inner.clone();
        let app = axum::Router::new()
            .fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let s = s.clone();
                async move { handle(&s, dims, method, uri, headers, body) }
            })
            // The API takes files up to 200 MB; a larger body must reach the check, which refuses it.
            .layer(axum::extract::DefaultBodyLimit::max(2 * MAX_BYTES));
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(async move { stopped.cancelled().await }).await;
        });
        Self { url: format!("http://{addr}"), dims, inner, stop }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Batches end as `e` on their first poll from now on.
    pub fn auto_end(&self, e: Option<Ending>) {
        self.lock().auto_end = e;
    }

    /// Lines whose text `rule` picks fail with the status it returns.
    pub fn fail_lines(&self, rule: impl Fn(&str) -> Option<u16> + Send + Sync + 'static) {
        self.lock().line_rule = Some(Box::new(rule));
    }

    /// Ends every batch still running as `e`.
    pub fn end_all(&self, e: Ending) {
        let mut g = self.lock();
        let ids: Vec<String> = g.batches.iter().filter(|b| b.status == "in_progress").map(|b| b.id.clone()).collect();
        for id in ids {
            end(&mut g, self.dims, &id, e);
        }
    }

    /// The next upload is stored but answered 500 (the answer lost on the way).
    pub fn lose_next_upload_answer(&self) {
        self.lock().lose_upload_answer = true;
    }

    /// The next batch is created but answered 500 (the answer lost on the way).
    pub fn lose_next_create_answer(&self) {
        self.lock().lose_create_answer = true;
    }

    /// The next upload is refused with a 400 (not counted as a violation: the test asked).
    pub fn refuse_next_upload(&self) {
        self.lock().refuse_upload = true;
    }

    /// Batches created.
    pub fn created(&self) -> usize {
        self.lock().batches.len()
    }

    /// Batches still running.
    pub fn running(&self) -> usize {
        self.lock().batches.iter().filter(|b| b.status == "in_progress").count()
    }

    /// The most batches that were running at once.
    pub fn max_running(&self) -> usize {
        self.lock().max_running
    }

    /// Batch input files uploaded.
    pub fn uploads(&self) -> usize {
        self.lock().uploads
    }

    /// Requests in each created batch, in creation order.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.lock().batches.iter().map(|b| b.total).collect()
    }

    /// Every rule a request broke.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// Texts embedded through `/v1/embeddings`.
    pub fn online_texts(&self) -> Vec<String> {
        self.lock().online.clone()
    }

    /// Tokens billed in the output files so far.
    pub fn billed(&self) -> u64 {
        self.lock().billed
    }
}

fn err(status: StatusCode, message: &str) -> Response {
    (status, json!({"error": {"message": message, "type": "invalid_request_error"}}).to_string()).into_response()
}

fn ok(v: Value) -> Response {
    (StatusCode::OK, [("content-type", "application/json")], v.to_string()).into_response()
}

/// A 400 recorded as a violation.
fn violation(g: &mut Inner, what: String) -> Response {
    g.violations.push(what.clone());
    err(StatusCode::BAD_REQUEST, &what)
}

fn handle(s: &Mutex<Inner>, dims: usize, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let mut g = s.lock().unwrap_or_else(|p| p.into_inner());
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {KEY}")) {
        return violation(&mut g, format!("{method} {uri}: missing or wrong bearer key"));
    }
    let path = uri.path().to_string();
    let query: BTreeMap<String, String> =
        uri.query().map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
    let parts: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    match (method.clone(), parts.as_slice()) {
        (Method::POST, ["embeddings"]) => embeddings(&mut g, dims, &body),
        (Method::POST, ["files"]) => upload(&mut g, &headers, &body),
        (Method::GET, ["files"]) => list_files(&g, &query),
        (Method::GET, ["files", id, "content"]) => match g.files.get(*id) {
            Some(f) => (StatusCode::OK, f.bytes.clone()).into_response(),
            None => err(StatusCode::NOT_FOUND, "no such file"),
        },
        (Method::DELETE, ["files", id]) => match g.files.remove(*id) {
            Some(_) => {
                g.deletes += 1;
                ok(json!({"id": id, "object": "file", "deleted": true}))
            }
            None => err(StatusCode::NOT_FOUND, "no such file"),
        },
        (Method::POST, ["batches"]) => create(&mut g, &body),
        (Method::GET, ["batches"]) => list_batches(&g, &query),
        (Method::GET, ["batches", id]) => {
            let id = id.to_string();
            if let Some(e) = g.auto_end {
                if g.batches.iter().any(|b| b.id == id && b.status == "in_progress") {
                    end(&mut g, dims, &id, e);
                }
            }
            match g.batches.iter().find(|b| b.id == id) {
                Some(b) => ok(batch_json(b)),
                None => err(StatusCode::NOT_FOUND, "no such batch"),
            }
        }
        _ => violation(&mut g, format!("unknown endpoint {method} {path}")),
    }
}

fn embeddings(g: &mut Inner, dims: usize, body: &[u8]) -> Response {
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let inputs: Vec<String> = match &req["input"] {
        Value::String(t) => vec![t.clone()],
        Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => return violation(g, "embeddings: input must be text or a list of texts".into()),
    };
    g.online.extend(inputs.iter().cloned());
    ok(embedding_body(dims, &inputs))
}

fn upload(g: &mut Inner, headers: &HeaderMap, body: &[u8]) -> Response {
    let parts = match multipart(headers, body) {
        Ok(p) => p,
        Err(e) => return violation(g, e),
    };
    let purpose = parts.iter().find(|p| p.0 == "purpose").map(|p| String::from_utf8_lossy(&p.2).to_string());
    if purpose.as_deref() != Some("batch") {
        return violation(g, format!("upload: purpose must be batch, got {purpose:?}"));
    }
    if std::mem::take(&mut g.refuse_upload) {
        return err(StatusCode::BAD_REQUEST, "the file was refused (asked by the test)");
    }
    let Some((_, Some(filename), bytes)) = parts.into_iter().find(|p| p.0 == "file") else {
        return violation(g, "upload: no file part with a filename".into());
    };
    if !filename.ends_with(".jsonl") {
        return violation(g, format!("upload: a batch file must be named *.jsonl, not {filename:?}"));
    }
    if let Err(e) = check_jsonl(&bytes) {
        return violation(g, format!("upload: {e}"));
    }
    let id = g.id("file");
    let size = bytes.len();
    g.files.insert(id.clone(), File { filename: filename.clone(), purpose: "batch", bytes });
    g.uploads += 1;
    if std::mem::take(&mut g.lose_upload_answer) {
        return err(StatusCode::INTERNAL_SERVER_ERROR, "the answer was lost");
    }
    ok(json!({"id": id, "object": "file", "bytes": size, "filename": filename, "purpose": "batch"}))
}

fn file_json(id: &str, f: &File) -> Value {
    json!({"id": id, "object": "file", "bytes": f.bytes.len(), "filename": f.filename, "purpose": f.purpose})
}

fn list_files(g: &Inner, q: &BTreeMap<String, String>) -> Response {
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(10_000);
    let purpose = q.get("purpose");
    let all: Vec<Value> = g
        .files
        .iter()
        .rev()
        .filter(|(_, f)| purpose.is_none_or(|p| p == f.purpose))
        .skip_while(|(id, _)| q.get("after").is_some_and(|a| *id >= a))
        .map(|(id, f)| file_json(id, f))
        .collect();
    page(all, limit)
}

fn page(all: Vec<Value>, limit: usize) -> Response {
    let has_more = all.len() > limit;
    let data: Vec<Value> = all.into_iter().take(limit).collect();
    let last = data.last().map(|v| v["id"].clone()).unwrap_or(Value::Null);
    ok(json!({"object": "list", "data": data, "has_more": has_more, "last_id": last}))
}

fn create(g: &mut Inner, body: &[u8]) -> Response {
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if req["endpoint"] != "/v1/embeddings" {
        return violation(g, format!("create: endpoint must be /v1/embeddings, got {}", req["endpoint"]));
    }
    if req["completion_window"] != "24h" {
        return violation(g, format!("create: completion_window must be 24h, got {}", req["completion_window"]));
    }
    let meta = req.get("metadata").cloned().unwrap_or(Value::Null);
    let meta_ok = match &meta {
        Value::Null => true,
        Value::Object(m) => m.len() <= 16 && m.values().all(|v| v.as_str().is_some_and(|s| s.len() <= 512)),
        _ => false,
    };
    if !meta_ok {
        return violation(g, "create: metadata must be at most 16 string pairs".into());
    }
    let file_id = req["input_file_id"].as_str().unwrap_or_default().to_string();
    let total = match g.files.get(&file_id) {
        Some(f) if f.purpose == "batch" => check_jsonl(&f.bytes).unwrap_or(0),
        _ => return violation(g, format!("create: input_file_id {file_id} is not an uploaded batch file")),
    };
    let id = g.id("batch");
    let b = Batch {
        id,
        status: "in_progress",
        input_file_id: file_id,
        metadata: meta,
        output_file_id: None,
        error_file_id: None,
        errors: None,
        total,
        completed: 0,
        failed: 0,
    };
    let v = batch_json(&b);
    g.batches.push(b);
    let running = g.batches.iter().filter(|b| b.status == "in_progress").count();
    g.max_running = g.max_running.max(running);
    if std::mem::take(&mut g.lose_create_answer) {
        return err(StatusCode::INTERNAL_SERVER_ERROR, "the answer was lost");
    }
    ok(v)
}

fn list_batches(g: &Inner, q: &BTreeMap<String, String>) -> Response {
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(20).min(100);
    let all: Vec<Value> =
        g.batches.iter().rev().skip_while(|b| q.get("after").is_some_and(|a| b.id >= *a)).map(batch_json).collect();
    page(all, limit)
}

fn batch_json(b: &Batch) -> Value {
    json!({
        "id": b.id, "object": "batch", "endpoint": "/v1/embeddings", "completion_window": "24h",
        "status": b.status, "input_file_id": b.input_file_id, "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id, "metadata": b.metadata,
        "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
        "errors": b.errors.as_ref().map(|d| json!({"object": "list", "data": d})),
    })
}
