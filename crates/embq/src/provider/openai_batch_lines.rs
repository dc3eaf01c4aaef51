//! The Batch API's JSONL lines for embeddings: one request line per job (its `custom_id` is the
//! job id), and the result lines of the output and error files, decoded into what each job's
//! outcome needs.
//!
//! One job per line: a line's `custom_id` then names exactly one job, a per-line error
//! concerns that job alone (as OpenAI reports input errors per request), and a line is
//! priced the same as the input texts it carries, so packing gains nothing at half price.

use serde::Deserialize;
use serde_json::{json, Value};

use super::message::Secrets;
use super::openai::parse_response;
use super::remote::triage;
use super::{ProviderError, RateSignals};

/// OpenAI's cap on requests per batch file.
pub const MAX_LINES_PER_FILE: usize = 50_000;
/// OpenAI's cap on a batch input file's size.
pub const MAX_FILE_BYTES: u64 = 200 * 1000 * 1000;

/// The request line (newline included) embedding `text` for job `custom_id`.
pub fn request_line(custom_id: &str, model: &str, dims: usize, text: &str) -> Vec<u8> {
    let mut body = json!({ "model": model, "input": [text], "encoding_format": "base64" });
    // Only the text-embedding-3 family accepts `dimensions` (as in the online provider).
    if model.starts_with("text-embedding-3") {
        body["dimensions"] = dims.into();
    }
    let line = json!({ "custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body });
    let mut out = line.to_string().into_bytes();
    out.push(b'\n');
    out
}

/// What one result line says about its job.
#[derive(Debug, Clone, PartialEq)]
pub enum LineResult {
    /// The vector (already checked: one, of the expected dimensions, finite) and billed tokens.
    Embedded {
        /// The vector.
        vector: Vec<f32>,
        /// `usage.prompt_tokens` (or `total_tokens`).
        tokens: Option<u64>,
    },
    /// The request failed: the job's retry schedule decides.
    Failed(ProviderError),
    /// Never run (the batch expired or was cancelled first): back to the queue, unspent.
    NotRun,
}

#[derive(Deserialize)]
struct Line {
    custom_id: String,
    #[serde(default)]
    response: Option<Response>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Response {
    status_code: u16,
    #[serde(default)]
    body: Value,
}

/// Decodes a line of an output or error file: its `custom_id` and result. A line that is not
/// JSON of that shape is an error (the file is broken, not the job).
pub fn parse_result_line(line: &str, dims: usize, secrets: &Secrets) -> Result<(String, LineResult), String> {
    let l: Line = serde_json::from_str(line).map_err(|e| secrets.message(&format!("malformed result line: {e}")))?;
    if let Some(err) = l.error.filter(|e| !e.is_null()) {
        let code = err.get("code").and_then(Value::as_str).unwrap_or_default();
        if matches!(code, "batch_expired" | "batch_cancelled") {
            return Ok((l.custom_id, LineResult::NotRun));
        }
        let message = err.get("message").and_then(Value::as_str).unwrap_or(code);
        return Ok((l.custom_id, LineResult::Failed(ProviderError::Transient(secrets.message(message)))));
    }
    let Some(resp) = l.response else {
        return Ok((
            l.custom_id,
            LineResult::Failed(ProviderError::InvalidResponse("no response and no error".into())),
        ));
    };
    let body = resp.body.to_string();
    let result = if (200..300).contains(&resp.status_code) {
        match parse_response(&body, 1, dims).map_err(|e| secrets.error(e)) {
            Ok(mut e) => match e.vectors.pop() {
                Some(vector) => LineResult::Embedded { vector, tokens: e.tokens },
                None => LineResult::Failed(ProviderError::InvalidResponse("no vector".into())),
            },
            Err(e) => LineResult::Failed(e),
        }
    } else {
        LineResult::Failed(triage(resp.status_code, &body, &RateSignals::default(), 1, secrets))
    };
    Ok((l.custom_id, result))
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;

    fn b64(v: &[f32]) -> String {
        base64::engine::general_purpose::STANDARD.encode(crate::vector::to_le_bytes(v))
    }

    #[test]
    fn a_request_line_is_one_job_s_embeddings_request() {
        let line = request_line("42", "text-embedding-3-small", 8, "hello");
        assert_eq!(line.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["custom_id"], "42");
        assert_eq!((v["method"].as_str(), v["url"].as_str()), (Some("POST"), Some("/v1/embeddings")));
        assert_eq!(v["body"]["input"], json!(["hello"]));
        assert_eq!(v["body"]["dimensions"], 8);
        let v: Value = serde_json::from_slice(&request_line("1", "text-embedding-ada-002", 8, "x")).unwrap();
        assert!(v["body"].get("dimensions").is_none(), "ada-002 rejects dimensions");
    }

    #[test]
    fn result_lines_become_vectors_failures_or_not_run() {
        let s = Secrets::new(Some("sk-secret"));
        let ok = json!({"custom_id": "7", "response": {"status_code": 200, "body": {
            "data": [{"index": 0, "embedding": b64(&[1.0, 2.0])}], "usage": {"prompt_tokens": 3}}}, "error": null});
        assert_eq!(
            parse_result_line(&ok.to_string(), 2, &s).unwrap(),
            ("7".into(), LineResult::Embedded { vector: vec![1.0, 2.0], tokens: Some(3) })
        );
        let short = ok.to_string().replace(&b64(&[1.0, 2.0]), &b64(&[1.0]));
        assert!(matches!(
            parse_result_line(&short, 2, &s).unwrap().1,
            LineResult::Failed(ProviderError::InvalidResponse(_))
        ));
        let bad = json!({"custom_id": "8", "response": {"status_code": 400, "body": {"error": {
            "message": "Invalid input sk-secret", "type": "invalid_request_error"}}}});
        match parse_result_line(&bad.to_string(), 2, &s).unwrap().1 {
            LineResult::Failed(e) => assert!(!e.to_string().contains("sk-secret"), "{e}"),
            other => panic!("{other:?}"),
        }
        let busy = json!({"custom_id": "9", "response": {"status_code": 500, "body": {"error": {"message": "oops"}}}});
        assert!(matches!(
            parse_result_line(&busy.to_string(), 2, &s).unwrap().1,
            LineResult::Failed(ProviderError::Transient(_))
        ));
        let expired = json!({"custom_id": "10", "response": null, "error": {"code": "batch_expired", "message": "x"}});
        assert_eq!(parse_result_line(&expired.to_string(), 2, &s).unwrap().1, LineResult::NotRun);
        assert!(parse_result_line("{not json", 2, &s).is_err());
    }
}
