//! The OpenAI Batch API client: files (`POST /v1/files` with `purpose=batch`, list, content) and
//! batches (create, get, list). An upload whose id was lost in a crash is found again by its name
//! and reused, so the lane never needs to delete one. The batch lane (`worker/batch_lane/`)
//! drives it.
//!
//! It shares the embeddings provider's settings (`OPENAI_BASE_URL`, `OPENAI_API_KEY`, the
//! HTTP client of `remote.rs`); every message made from a response is scrubbed of the key.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::message::Secrets;
use super::openai::OpenAiSettings;
use super::remote;
use crate::redact::Secret;

/// Uploads and downloads of files up to 200 MB get this long, whatever `PROVIDER_TIMEOUT` says.
const FILE_TIMEOUT: Duration = Duration::from_secs(1800);
/// The longest JSON answer (a batch, a page of a listing) read.
const JSON_LIMIT: usize = 8 << 20;
/// Pages of a listing searched for a lost submission before giving up for this round.
const MAX_PAGES: usize = 50;

/// What went wrong talking to the Batch API, named by what the lane must do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchApiError {
    /// Network, timeout, 429 or 5xx: try the same step again later.
    #[error("batch API unavailable: {0}")]
    Transient(String),
    /// A 4xx other than 429: this request will not succeed as it is.
    #[error("batch API refused the request: {0}")]
    Refused(String),
    /// A 2xx whose body is not what the API documents.
    #[error("batch API answered unexpectedly: {0}")]
    Invalid(String),
}

/// A file as the API describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FileObject {
    /// `file-...`.
    pub id: String,
    /// The name it was uploaded under.
    #[serde(default)]
    pub filename: String,
    /// `batch`, `batch_output`, ...
    #[serde(default)]
    pub purpose: String,
}

/// Request counts of a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RequestCounts {
    /// Requests in the file.
    #[serde(default)]
    pub total: u64,
    /// Answered successfully.
    #[serde(default)]
    pub completed: u64,
    /// Failed.
    #[serde(default)]
    pub failed: u64,
}

/// A batch as the API describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BatchObject {
    /// `batch_...`.
    pub id: String,
    /// `validating`, `failed`, `in_progress`, `finalizing`, `completed`, `expired`,
    /// `cancelling` or `cancelled`.
    pub status: String,
    /// The uploaded input file.
    #[serde(default)]
    pub input_file_id: Option<String>,
    /// Results, once there are any.
    #[serde(default)]
    pub output_file_id: Option<String>,
    /// Per-line errors, once there are any.
    #[serde(default)]
    pub error_file_id: Option<String>,
    /// The metadata given at creation.
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Counts.
    #[serde(default)]
    pub request_counts: Option<RequestCounts>,
    /// Why a batch failed validation (`token_limit_exceeded`, a bad line, ...).
    #[serde(default)]
    pub errors: Option<BatchErrors>,
}

/// The `errors` of a batch that failed validation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct BatchErrors {
    /// One entry per problem.
    #[serde(default)]
    pub data: Vec<BatchError>,
}

/// One validation problem of a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct BatchError {
    /// Such as `token_limit_exceeded`.
    #[serde(default)]
    pub code: Option<String>,
    /// What the provider says.
    #[serde(default)]
    pub message: Option<String>,
}

/// The code of a batch refused because the organisation's enqueued-token limit was reached.
pub const OVER_ENQUEUED_LIMIT: &str = "token_limit_exceeded";

impl BatchObject {
    /// Whether the batch has ended at the provider (no status will follow).
    pub fn ended(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "expired" | "cancelled")
    }

    /// Why it failed, as `code: message` per problem; `None` without errors.
    pub fn failure(&self) -> Option<String> {
        let data = &self.errors.as_ref()?.data;
        let parts: Vec<String> = data
            .iter()
            .map(|e| format!("{}: {}", e.code.as_deref().unwrap_or("error"), e.message.as_deref().unwrap_or("")))
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// The `submission_id` of its metadata, if embq created it.
    pub fn submission_id(&self) -> Option<&str> {
        self.metadata.as_ref()?.get("submission_id")?.as_str()
    }
}

#[derive(Deserialize)]
struct Page<T> {
    data: Vec<T>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    last_id: Option<String>,
}

/// The Batch API of one account.
#[derive(Debug, Clone)]
pub struct BatchClient {
    client: reqwest::Client,
    /// `https://host/v1`.
    base: String,
    api_key: Option<Secret>,
    secrets: Secrets,
}

impl BatchClient {
    /// A client with the embeddings provider's base URL, key and timeout.
    pub fn new(s: &OpenAiSettings) -> Result<Self, String> {
        let base = s.base_url.trim_end_matches('/');
        let base = if base.ends_with("/v1") { base.to_string() } else { format!("{base}/v1") };
        Ok(Self {
            client: remote::client(s.timeout)?,
            base,
            secrets: Secrets::new(s.api_key.as_ref().map(Secret::expose)),
            api_key: s.api_key.clone(),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.client.request(method, format!("{}{path}", self.base));
        match &self.api_key {
            Some(k) => req.bearer_auth(k.expose()),
            None => req,
        }
    }

    /// Sends `req` and decodes a 2xx JSON answer as `T`.
    async fn call<T: for<'de> Deserialize<'de>>(&self, req: reqwest::RequestBuilder) -> Result<T, BatchApiError> {
        let resp = self.send(req).await?;
        let body = remote::read_body(resp, JSON_LIMIT).await.map_err(|e| self.transient(&e.to_string()))?;
        serde_json::from_str(&body).map_err(|e| BatchApiError::Invalid(self.secrets.message(&e.to_string())))
    }

    /// Sends `req`; a non-2xx answer becomes the error its status says.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, BatchApiError> {
        let resp = req.send().await.map_err(|e| self.transient(&remote::transport_error(e).to_string()))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        let body = remote::read_body(resp, JSON_LIMIT).await.unwrap_or_default();
        let message = self.secrets.message(&format!("HTTP {status}: {}", body.trim()));
        Err(if status == 429 || status >= 500 || status == 408 {
            BatchApiError::Transient(message)
        } else {
            BatchApiError::Refused(message)
        })
    }

    fn transient(&self, m: &str) -> BatchApiError {
        BatchApiError::Transient(self.secrets.message(m))
    }

    /// Uploads a batch input file (multipart, `purpose=batch`).
    pub async fn upload(&self, file: Upload) -> Result<FileObject, BatchApiError> {
        let req = self
            .request(reqwest::Method::POST, "/files")
            .header("content-type", format!("multipart/form-data; boundary={}", file.boundary))
            .timeout(FILE_TIMEOUT)
            .body(file.body);
        self.call(req).await
    }

    /// Creates the batch of an uploaded file, tagged with `submission_id`.
    pub async fn create(&self, input_file_id: &str, submission_id: &str) -> Result<BatchObject, BatchApiError> {
        let body = json!({
            "input_file_id": input_file_id,
            "endpoint": "/v1/embeddings",
            "completion_window": "24h",
            "metadata": { "submission_id": submission_id, "created_by": "embq" },
        });
        self.call(self.request(reqwest::Method::POST, "/batches").json(&body)).await
    }

    /// The batch as it is now.
    pub async fn get(&self, batch_id: &str) -> Result<BatchObject, BatchApiError> {
        self.call(self.request(reqwest::Method::GET, &format!("/batches/{}", path_part(batch_id)))).await
    }

    /// The batch created for `submission_id`, searched through the account's batches.
    pub async fn find_batch(&self, submission_id: &str) -> Result<Option<BatchObject>, BatchApiError> {
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut req = self.request(reqwest::Method::GET, "/batches").query(&[("limit", "100")]);
            if let Some(a) = &after {
                req = req.query(&[("after", a.as_str())]);
            }
            let page: Page<BatchObject> = self.call(req).await?;
            if let Some(b) = page.data.iter().find(|b| b.submission_id() == Some(submission_id)) {
                return Ok(Some(b.clone()));
            }
            after = page.last_id.or_else(|| page.data.last().map(|b| b.id.clone()));
            if !page.has_more || after.is_none() {
                return Ok(None);
            }
        }
        Err(BatchApiError::Transient(format!("no batch for submission {submission_id} in {MAX_PAGES} pages")))
    }

    /// The uploaded batch input named `name`, searched through the account's files.
    pub async fn find_file(&self, name: &str) -> Result<Option<FileObject>, BatchApiError> {
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut req =
                self.request(reqwest::Method::GET, "/files").query(&[("purpose", "batch"), ("limit", "1000")]);
            if let Some(a) = &after {
                req = req.query(&[("after", a.as_str())]);
            }
            let page: Page<FileObject> = self.call(req).await?;
            if let Some(f) = page.data.iter().find(|f| f.filename == name) {
                return Ok(Some(f.clone()));
            }
            after = page.last_id.or_else(|| page.data.last().map(|f| f.id.clone()));
            if !page.has_more || after.is_none() {
                return Ok(None);
            }
        }
        Err(BatchApiError::Transient(format!("no file {name} in {MAX_PAGES} pages")))
    }

    /// A file's content, to be read as it arrives (results files can be large).
    pub async fn content(&self, file_id: &str) -> Result<reqwest::Response, BatchApiError> {
        let req = self.request(reqwest::Method::GET, &format!("/files/{}/content", path_part(file_id)));
        self.send(req.timeout(FILE_TIMEOUT)).await
    }

    /// The key-scrubbing of this client, for messages made from downloaded lines.
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }
}

/// An id as one path segment: ids are `[A-Za-z0-9_-]`; anything else is percent-encoded.
fn path_part(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

/// A batch input file ready to upload: its whole `multipart/form-data` body, written in one
/// buffer (a file may reach 200 MB: it is never copied).
pub struct Upload {
    boundary: String,
    body: Vec<u8>,
}

impl Upload {
    /// The upload of file `name` whose JSONL content `write` appends (about `size` bytes).
    pub fn new(name: &str, size: usize, write: impl FnOnce(&mut Vec<u8>)) -> Self {
        let boundary = format!("embq-{}", uuid::Uuid::new_v4().simple());
        let body = multipart(&boundary, name, size, write);
        Self { boundary, body }
    }
}

/// A `multipart/form-data` body of the `purpose` field and the file.
fn multipart(boundary: &str, name: &str, size: usize, write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let name = name.replace(['"', '\r', '\n'], "_");
    let mut out = Vec::with_capacity(size + 512);
    out.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
             Content-Type: application/jsonl\r\n\r\n"
        )
        .as_bytes(),
    );
    write(&mut out);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_multipart_body_carries_the_purpose_and_the_named_file() {
        let body = String::from_utf8(multipart("B", "embq-1.jsonl", 3, |f| f.extend_from_slice(b"{}\n"))).unwrap();
        assert_eq!(
            body,
            "--B\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--B\r\n\
             Content-Disposition: form-data; name=\"file\"; filename=\"embq-1.jsonl\"\r\n\
             Content-Type: application/jsonl\r\n\r\n{}\n\r\n--B--\r\n"
        );
    }

    #[test]
    fn batches_know_when_they_ended_and_whose_they_are() {
        let b: BatchObject = serde_json::from_str(
            r#"{"id":"batch_1","status":"in_progress","metadata":{"submission_id":"s-1"},"request_counts":{"total":2}}"#,
        )
        .unwrap();
        assert!(!b.ended());
        assert_eq!(b.submission_id(), Some("s-1"));
        for s in ["completed", "failed", "expired", "cancelled"] {
            assert!(BatchObject { status: s.into(), ..b.clone() }.ended(), "{s}");
        }
        assert_eq!(path_part("file-a/b"), "file-a%2Fb");
        assert_eq!(b.failure(), None);
        let failed: BatchObject = serde_json::from_str(
            r#"{"id":"batch_2","status":"failed","errors":{"object":"list","data":[
                {"code":"token_limit_exceeded","message":"Enqueued token limit reached.","line":null}]}}"#,
        )
        .unwrap();
        assert_eq!(failed.failure().as_deref(), Some("token_limit_exceeded: Enqueued token limit reached."));
    }
}
