//! How the mock answers: embeddings bodies, and the output and error files of an ended batch.

use base64::Engine;
use embq::provider::HashProvider;
use serde_json::{json, Value};

use super::{Ending, File, Inner};

/// An embeddings answer for `inputs`: hash vectors in base64, `usage` at one token per 4 bytes.
pub(super) fn embedding_body(dims: usize, inputs: &[String]) -> Value {
    let hash = HashProvider::new("mock", dims);
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let v = embq::vector::to_le_bytes(&hash.vector(t));
            json!({"object": "embedding", "index": i,
                   "embedding": base64::engine::general_purpose::STANDARD.encode(v)})
        })
        .collect();
    let tokens: usize = inputs.iter().map(|t| t.len().div_ceil(4)).sum();
    json!({"object": "list", "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
}

/// Ends batch `id` as `e`, writing its output and error files.
pub(super) fn end(g: &mut Inner, dims: usize, id: &str, e: Ending) {
    let Some(pos) = g.batches.iter().position(|b| b.id == id) else { return };
    let input = g.files.get(&g.batches[pos].input_file_id).map(|f| f.bytes.clone()).unwrap_or_default();
    let (mut out, mut errs, mut done, mut failed) = (String::new(), String::new(), 0, 0);
    let answered = match e {
        Ending::Complete => usize::MAX,
        Ending::Expire(n) | Ending::Cancel(n) => n,
        Ending::Fail | Ending::OverLimit => 0,
    };
    for (i, line) in String::from_utf8_lossy(&input).lines().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        let custom_id = v["custom_id"].clone();
        let texts: Vec<String> = match &v["body"]["input"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        };
        let rid = format!("batch_req_{i}");
        if matches!(e, Ending::Fail | Ending::OverLimit) {
            continue;
        }
        if i >= answered {
            let code = if matches!(e, Ending::Cancel(_)) { "batch_cancelled" } else { "batch_expired" };
            errs.push_str(&format!(
                "{}\n",
                json!({"id": rid, "custom_id": custom_id, "response": null,
                       "error": {"code": code, "message": "This request was not executed."}})
            ));
            continue;
        }
        if let Some(status) = g.line_rule.as_ref().and_then(|r| texts.first().and_then(|t| r(t))) {
            failed += 1;
            errs.push_str(&format!(
                "{}\n",
                json!({"id": rid, "custom_id": custom_id, "error": null, "response": {"status_code": status,
                       "request_id": "req", "body": {"error": {"message": "mock line failure", "type": "server_error"}}}})
            ));
            continue;
        }
        let body = embedding_body(dims, &texts);
        g.billed += body["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
        done += 1;
        out.push_str(&format!(
            "{}\n",
            json!({"id": rid, "custom_id": custom_id, "error": null,
                   "response": {"status_code": 200, "request_id": "req", "body": body}})
        ));
    }
    let output = (!out.is_empty()).then(|| {
        let id = g.id("file");
        g.files.insert(
            id.clone(),
            File { filename: "batch_output.jsonl".into(), purpose: "batch_output", bytes: out.into_bytes() },
        );
        id
    });
    let error = (!errs.is_empty()).then(|| {
        let id = g.id("file");
        g.files.insert(
            id.clone(),
            File { filename: "batch_errors.jsonl".into(), purpose: "batch_output", bytes: errs.into_bytes() },
        );
        id
    });
    let b = &mut g.batches[pos];
    b.status = match e {
        Ending::Complete => "completed",
        Ending::Expire(_) => "expired",
        Ending::Cancel(_) => "cancelled",
        Ending::Fail | Ending::OverLimit => "failed",
    };
    b.errors = match e {
        Ending::OverLimit => Some(json!([{"code": "token_limit_exceeded", "line": null,
            "message": "Enqueued token limit reached for text-embedding-3-small. Please try again once some in_progress batches have been completed."}])),
        Ending::Fail => Some(json!([{"code": "invalid_request", "line": 1, "message": "mock validation failure"}])),
        _ => None,
    };
    (b.output_file_id, b.error_file_id, b.completed, b.failed) = (output, error, done, failed);
}
