//! The job listing with its filters, and one job's page.

use std::fmt::Write;

use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use serde::Deserialize;

use super::html::{esc, layout, time, url_arg};
use super::{Page, PageError, Shared};
use crate::queue::{JobFilter, JobState};

/// How many jobs a listing shows.
const LISTING: i64 = 200;

/// The listing's query string; empty fields mean "any".
#[derive(Deserialize, Default)]
pub struct Filters {
    #[serde(default)]
    state: String,
    #[serde(default)]
    source_type: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    error: String,
}

/// An empty field as no filter.
fn given(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// `GET /jobs`.
pub async fn list(State(s): State<Shared>, Query(f): Query<Filters>) -> Page {
    let state = match given(&f.state) {
        None => None,
        Some(t) => Some(t.parse::<JobState>().map_err(|e| PageError::Bad(e.to_string()))?),
    };
    let filter = JobFilter {
        state,
        source_type: given(&f.source_type),
        key: given(&f.key),
        error: given(&f.error),
        limit: LISTING,
    };
    let jobs = s.queue.jobs(&filter).await?;
    let mut body = String::from("<form method=\"get\" action=\"/jobs\" class=\"filters\"><label>State <select name=\"state\"><option value=\"\">any</option>");
    for st in JobState::ALL {
        let sel = if filter.state == Some(st) { " selected" } else { "" };
        let _ = write!(body, "<option{sel}>{}</option>", st.as_str());
    }
    let _ = write!(
        body,
        "</select></label> <label>Source type <input name=\"source_type\" value=\"{}\"></label> \
         <label>Key <input name=\"key\" value=\"{}\"></label> <label>Error <input name=\"error\" value=\"{}\"></label> \
         <button>Filter</button></form>",
        esc(&f.source_type),
        esc(&f.key),
        esc(&f.error)
    );
    let _ = write!(
        body,
        "<section data-live id=\"listing\"><p class=\"muted\">{} job(s){}</p><table class=\"jobs\"><tr><th>id</th><th>key</th>\
         <th>state</th><th>priority</th><th>attempts</th><th>updated</th><th>last error</th></tr>",
        jobs.len(),
        if jobs.len() as i64 == LISTING { ", newest first; narrow the filter to see older ones" } else { "" }
    );
    for j in &jobs {
        let _ = write!(
            body,
            "<tr><td><a href=\"/jobs/{id}\">{id}</a></td><td>{}/{}/{}</td><td class=\"state-{st}\">{st}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td class=\"err\">{}</td></tr>",
            esc(&j.source_type),
            esc(&j.source_id),
            esc(&j.content_type),
            j.priority,
            j.attempts,
            time(Some(j.updated_at)),
            esc(j.last_error.as_deref().unwrap_or("")),
            id = j.id,
            st = j.state.as_str(),
        );
    }
    body.push_str("</table></section>");
    Ok(layout("Jobs", &s.access.csrf, &body).into_response())
}

/// `GET /jobs/{id}`.
pub async fn one(State(s): State<Shared>, Path(id): Path<String>) -> Page {
    let id: i64 = id.parse().map_err(|_| PageError::Bad(format!("job id {:?} is not a number", id)))?;
    let Some(j) = s.queue.job(id).await? else {
        return Err(PageError::NotFound(format!("there is no job {id}")));
    };
    let m = &j.summary;
    let vector = match &j.vector {
        None => "none stored for this key".to_string(),
        Some(v) => format!(
            "{} · {} dimensions{}",
            esc(&v.model),
            v.dimensions,
            if v.from_this_job { "" } else { " (written by another job of this key)" }
        ),
    };
    let mut body = format!(
        "<section data-live id=\"job\"><dl class=\"job\"><dt>Key</dt><dd id=\"key\">{}/{}/{}</dd><dt>State</dt><dd id=\"state\">{}</dd>\
         <dt>Priority</dt><dd>{}</dd><dt>Attempts</dt><dd id=\"attempts\">{}</dd><dt>Created</dt><dd>{}</dd><dt>Run at</dt><dd>{}</dd>\
         <dt>Updated</dt><dd>{}</dd><dt>Finished</dt><dd>{}</dd><dt>Lease</dt><dd>{} until {}</dd><dt>Vector</dt><dd id=\"vector\">{vector}</dd>\
         <dt>Last error</dt><dd id=\"error\" class=\"err\">{}</dd><dt>Metadata</dt><dd><pre>{}</pre></dd></dl>",
        esc(&m.source_type),
        esc(&m.source_id),
        esc(&m.content_type),
        m.state.as_str(),
        m.priority,
        m.attempts,
        time(Some(j.created_at)),
        time(Some(j.run_at)),
        time(Some(m.updated_at)),
        time(j.finished_at),
        esc(j.lease_owner.as_deref().unwrap_or("–")),
        time(j.lease_expires_at),
        esc(m.last_error.as_deref().unwrap_or("–")),
        esc(j.metadata.as_deref().unwrap_or("–")),
    );
    let _ = write!(
        body,
        "<h2>Text</h2><pre id=\"text\" class=\"text\">{}</pre><p><a href=\"/jobs?key={}\">Other jobs of this key</a></p></section>",
        esc(&j.text),
        url_arg(&m.source_id)
    );
    Ok(layout(&format!("Job {id}"), &s.access.csrf, &body).into_response())
}
