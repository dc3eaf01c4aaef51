//! Dead letters grouped by error: retry or purge one job, a selection or a whole group, each
//! after a confirmation that names the count. The confirmation carries the exact ids it counted,
//! so the action applies to those jobs and no others (a job that dies meanwhile is left alone).

use std::fmt::Write;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::IntoResponse;

use super::form::Fields;
use super::html::{csrf_field, esc, layout, time, url_arg};
use super::{guard, Page, PageError, Shared};
use crate::queue::DeadSelection;

/// How many groups and jobs the page lists.
const LISTING: i64 = 200;

/// What to do with the selected dead jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Ready again with a fresh attempt budget.
    Retry,
    /// Deleted.
    Purge,
}

impl Action {
    fn parse(s: &str) -> Result<Self, PageError> {
        match s {
            "retry" => Ok(Self::Retry),
            "purge" => Ok(Self::Purge),
            other => Err(PageError::Bad(format!("unknown action {other:?}: retry or purge"))),
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Purge => "purge",
        }
    }
}

/// `GET /dead`.
pub async fn page(State(s): State<Shared>) -> Page {
    let csrf = csrf_field(&s.access.csrf);
    let mut body = String::from("<section data-live id=\"groups\"><h2>By error</h2><table class=\"groups\"><tr><th>jobs</th><th>error</th><th>newest</th><th></th></tr>");
    for g in s.queue.dead_groups(LISTING).await? {
        let _ = write!(
            body,
            "<tr><td class=\"count\">{}</td><td class=\"err\"><a href=\"/jobs?state=dead&amp;error={}\">{}</a></td><td>{}</td><td>\
             <form method=\"post\" action=\"/dead/confirm\">{csrf}<input type=\"hidden\" name=\"group\" value=\"{}\">\
             <button name=\"action\" value=\"retry\">Retry group</button> <button name=\"action\" value=\"purge\" class=\"danger\">Purge group</button></form></td></tr>",
            g.count,
            url_arg(&g.error),
            if g.error.is_empty() { "(no error recorded)".to_string() } else { esc(&g.error) },
            time(Some(g.newest_at)),
            esc(&g.error),
        );
    }
    body.push_str("</table></section><h2>Newest dead jobs</h2>");
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/dead/confirm\" id=\"selection\">{csrf}<p><button name=\"action\" value=\"retry\">Retry selected</button> \
         <button name=\"action\" value=\"purge\" class=\"danger\">Purge selected</button></p><table class=\"jobs\"><tr><th></th><th>id</th><th>key</th><th>attempts</th><th>died</th><th>error</th></tr>"
    );
    for j in s.queue.dead_jobs(LISTING).await? {
        let _ = write!(
            body,
            "<tr><td><input type=\"checkbox\" name=\"id\" value=\"{id}\" aria-label=\"select job {id}\"></td><td><a href=\"/jobs/{id}\">{id}</a></td>\
             <td>{}/{}/{}</td><td>{}</td><td>{}</td><td class=\"err\">{}</td></tr>",
            esc(&j.source_type),
            esc(&j.source_id),
            esc(&j.content_type),
            j.attempts,
            time(Some(j.failed_at)),
            esc(j.last_error.as_deref().unwrap_or("")),
            id = j.id,
        );
    }
    body.push_str("</table></form>");
    Ok(layout("Dead letters", &s.access.csrf, &body).into_response())
}

/// `POST /dead/confirm`: counts what a group or selection holds now and asks to confirm.
pub async fn confirm(State(s): State<Shared>, body: Bytes) -> Page {
    let f = Fields::parse(&body);
    if !s.access.csrf_ok(f.one("csrf").unwrap_or("")) {
        return Ok(guard::csrf_refused());
    }
    let action = Action::parse(f.one("action").unwrap_or(""))?;
    let (ids, what) = match f.one("group") {
        Some(error) => {
            let label = if error.is_empty() {
                "with no error recorded".to_string()
            } else {
                format!("failing with “{}”", esc(error))
            };
            (s.queue.dead_ids(error).await?, label)
        }
        None => (f.ids()?, "selected".to_string()),
    };
    if ids.is_empty() {
        return Err(PageError::Bad("nothing selected: tick the jobs to act on, or use a group's button".into()));
    }
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    let verb = if action == Action::Retry { "Retry" } else { "Purge" };
    let body = format!(
        "<p id=\"question\">{verb} <strong id=\"count\">{n}</strong> dead job(s) {what}?{}</p>\
         <form method=\"post\" action=\"/dead/apply\">{}<input type=\"hidden\" name=\"action\" value=\"{}\">\
         <input type=\"hidden\" name=\"ids\" value=\"{}\"><button id=\"confirm\" class=\"{}\">{verb} {n} job(s)</button> \
         <a href=\"/dead\">Cancel</a></form>",
        if action == Action::Purge { " They are deleted for good." } else { "" },
        csrf_field(&s.access.csrf),
        action.as_str(),
        list.join(","),
        if action == Action::Purge { "danger" } else { "" },
        n = ids.len(),
    );
    Ok(layout("Confirm", &s.access.csrf, &body).into_response())
}

/// `POST /dead/apply`: the confirmed retry or purge, by exact ids (the CLI's `dlq` operations).
pub async fn apply(State(s): State<Shared>, body: Bytes) -> Page {
    let f = Fields::parse(&body);
    if !s.access.csrf_ok(f.one("csrf").unwrap_or("")) {
        return Ok(guard::csrf_refused());
    }
    let action = Action::parse(f.one("action").unwrap_or(""))?;
    let ids = f.ids()?;
    if ids.is_empty() {
        return Err(PageError::Bad("no job ids given".into()));
    }
    let which = DeadSelection::Ids(ids);
    let msg = match action {
        Action::Retry => format!("{} dead-lettered job(s) queued again", s.queue.retry_dead(&which).await?),
        Action::Purge => format!("{} dead-lettered job(s) deleted", s.queue.purge_dead(&which).await?),
    };
    let body = format!("<p id=\"result\">{}</p><p><a href=\"/dead\">Back to the dead letters</a></p>", esc(&msg));
    Ok(layout("Done", &s.access.csrf, &body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_retry_and_purge_are_actions() {
        assert!(Action::parse("delete").is_err());
    }
}
