//! What the mock checks in a request, as the real API does: the multipart upload and the JSONL
//! batch file.

use std::collections::HashSet;

use axum::http::HeaderMap;
use serde_json::Value;

use super::{MAX_BYTES, MAX_LINES};

/// One part of a multipart body: (name, filename, bytes).
pub(super) type Part = (String, Option<String>, Vec<u8>);

/// The parts of a multipart body.
pub(super) fn multipart(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Part>, String> {
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let boundary = ct
        .strip_prefix("multipart/form-data; boundary=")
        .ok_or_else(|| format!("upload: content-type must be multipart/form-data, not {ct:?}"))?;
    let delim = format!("--{boundary}");
    let text = body;
    let mut parts = Vec::new();
    let mut rest = text.strip_prefix(delim.as_bytes()).ok_or("upload: body does not open with the boundary")?;
    loop {
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        rest = rest.strip_prefix(b"\r\n").ok_or("upload: boundary not followed by CRLF")?;
        let head_end = find(rest, b"\r\n\r\n").ok_or("upload: part without headers")?;
        let head = String::from_utf8_lossy(&rest[..head_end]).to_string();
        rest = &rest[head_end + 4..];
        let end = find(rest, format!("\r\n{delim}").as_bytes()).ok_or("upload: part not closed")?;
        let content = rest[..end].to_vec();
        rest = &rest[end + 2 + delim.len()..];
        // `key="value"` in the Content-Disposition line.
        let disposition = head.lines().find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"));
        let attr = |key: &str| {
            disposition?.split(';').find_map(|p| p.trim().strip_prefix(&format!("{key}=\""))?.split('"').next())
        };
        let name = attr("name").ok_or("upload: part without a name")?.to_string();
        parts.push((name, attr("filename").map(str::to_string), content));
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Checks a batch input file as the API does; `Err` says why it is refused.
pub(super) fn check_jsonl(bytes: &[u8]) -> Result<usize, String> {
    if bytes.len() > MAX_BYTES {
        return Err(format!("file is {} bytes; at most {MAX_BYTES}", bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "file is not UTF-8".to_string())?;
    let (mut ids, mut models, mut n) = (HashSet::new(), HashSet::new(), 0);
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        n += 1;
        let v: Value = serde_json::from_str(line).map_err(|e| format!("line {}: not JSON: {e}", i + 1))?;
        let id = v["custom_id"].as_str().ok_or(format!("line {}: custom_id must be a string", i + 1))?;
        if !ids.insert(id.to_string()) {
            return Err(format!("line {}: custom_id {id} is not unique in the file", i + 1));
        }
        if v["method"] != "POST" || v["url"] != "/v1/embeddings" {
            return Err(format!("line {}: method/url must be POST /v1/embeddings", i + 1));
        }
        let model = v["body"]["model"].as_str().ok_or(format!("line {}: body.model missing", i + 1))?;
        models.insert(model.to_string());
        let input_ok = match &v["body"]["input"] {
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty() && a.iter().all(|x| x.as_str().is_some_and(|s| !s.is_empty())),
            _ => false,
        };
        if !input_ok {
            return Err(format!("line {}: body.input must be a non-empty text or list of texts", i + 1));
        }
    }
    if n == 0 {
        return Err("file has no requests".into());
    }
    if n > MAX_LINES {
        return Err(format!("file has {n} requests; at most {MAX_LINES}"));
    }
    if models.len() > 1 {
        return Err("every request of a file must use the same model".into());
    }
    Ok(n)
}
