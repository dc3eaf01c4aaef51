//! A query box that runs `embq search`: the same embedding of the query and the same store search.

use std::fmt::Write;

use axum::extract::{Query, State};
use axum::response::IntoResponse;
use serde::Deserialize;

use super::html::{esc, layout};
use super::{Page, PageError, Shared};

/// How many hits a search shows.
const HITS: usize = 10;

/// The query string.
#[derive(Deserialize, Default)]
pub struct Params {
    #[serde(default)]
    q: String,
}

/// `GET /search?q=…`.
pub async fn page(State(s): State<Shared>, Query(p): Query<Params>) -> Page {
    let mut body = format!(
        "<form method=\"get\" action=\"/search\" class=\"filters\"><label>Query <input name=\"q\" value=\"{}\" size=\"40\"></label> \
         <button>Search</button> <span class=\"muted\">model {}</span></form>",
        esc(&p.q),
        esc(s.provider.model())
    );
    let query = p.q.trim();
    if !query.is_empty() {
        let found = crate::nearest::nearest(s.provider.as_ref(), s.queue.as_ref(), query, HITS, None)
            .await
            .map_err(|e| PageError::Bad(e.to_string()))?;
        if found.hits.is_empty() {
            body.push_str("<p>No embeddings of this model are stored yet.</p>");
        }
        body.push_str("<ol class=\"hits\">");
        for h in &found.hits {
            let _ = write!(
                body,
                "<li><span class=\"score\">{:.4}</span> <span class=\"key\">{}/{}/{}</span><div class=\"text\">{}</div></li>",
                h.score,
                esc(&h.source_type),
                esc(&h.source_id),
                esc(&h.content_type),
                esc(h.text.as_deref().unwrap_or("(text no longer kept)"))
            );
        }
        body.push_str("</ol>");
    }
    Ok(layout("Search", &s.access.csrf, &body).into_response())
}
