//! The overview: jobs by state and priority, the oldest ready job, activity charts, workers with
//! their leases, and the fleet budgets' pauses with a resume button.

use std::fmt::Write;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect};
use chrono::Utc;

use super::html::{csrf_field, esc, layout, time};
use super::{charts, guard, Page, PageError, Shared};
use crate::limiter;

/// How far back the charts reach.
const CHART_MINUTES: usize = 60;

/// `GET /`.
pub async fn page(State(s): State<Shared>) -> Page {
    let q = &s.queue;
    let stats = q.stats().await?;
    let mut body = String::from("<section data-live id=\"counts\"><h2>Jobs by state</h2><table class=\"counts\"><tr>");
    let counts = [
        ("ready", stats.ready),
        ("scheduled", stats.scheduled),
        ("running", stats.running),
        ("done", stats.done),
        ("dead", stats.dead),
        ("superseded", stats.superseded),
        ("cancelled", stats.cancelled),
    ];
    for (name, _) in counts {
        let _ = write!(body, "<th>{name}</th>");
    }
    body.push_str("</tr><tr>");
    for (name, n) in counts {
        let _ = write!(body, "<td data-state=\"{name}\"><a href=\"/jobs?state={name}\">{n}</a></td>");
    }
    body.push_str("</tr></table>");
    let oldest = stats.oldest_ready_age_seconds.map(|a| format!("{a:.0} s")).unwrap_or_else(|| "none ready".into());
    let _ = write!(body, "<p>Oldest ready job: <strong id=\"oldest\">{oldest}</strong></p>");
    body.push_str("<h3>Ready by priority</h3><table><tr><th>priority</th><th>ready</th></tr>");
    for (p, n) in &stats.ready_by_priority {
        let _ = write!(body, "<tr><td>{p}</td><td>{n}</td></tr>");
    }
    body.push_str("</table></section>");

    let since = Utc::now() - chrono::Duration::minutes(CHART_MINUTES as i64 - 1);
    let activity = q.activity(since, CHART_MINUTES).await?;
    let done: Vec<u64> = activity.minutes.iter().map(|m| m.done + m.dead).collect();
    let backlog: Vec<u64> = activity.minutes.iter().map(|m| m.backlog).collect();
    let _ = write!(
        body,
        "<section data-live id=\"charts\"><h2>Last hour</h2>{}{}</section>",
        charts::bars("Jobs finished per minute", &done),
        charts::bars("Queue depth (unfinished jobs)", &backlog)
    );

    body.push_str("<section data-live id=\"workers\"><h2>Workers</h2><table><tr><th>worker</th><th>host</th><th>state</th><th>leased jobs</th><th>next lease expiry</th><th>last heartbeat</th></tr>");
    for w in q.worker_leases().await? {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&w.id),
            esc(&w.host),
            w.state.as_str(),
            w.leased_jobs,
            time(w.next_expiry),
            time(Some(w.last_heartbeat_at))
        );
    }
    body.push_str("</table></section>");

    body.push_str("<section data-live id=\"budgets\"><h2>Provider budgets</h2>");
    match &s.budgets_url {
        None => body.push_str(
            "<p>A SQLite queue budgets per worker process: a pause shows in the worker's /ready and ends by itself.</p>",
        ),
        Some(url) => {
            let pauses = limiter::fleet_pauses(url).await.map_err(|limiter::LimiterError::Unavailable(m)| {
                PageError::Queue(crate::queue::QueueError::Unavailable(m))
            })?;
            if pauses.is_empty() {
                body.push_str("<p>No fleet budget is paused.</p>");
            }
            for p in pauses {
                let _ = write!(
                    body,
                    "<form method=\"post\" action=\"/budget/resume\" class=\"pause\">{}<input type=\"hidden\" name=\"budget\" value=\"{b}\">\
                     <span>{b}: paused by the provider, {:.0} s left</span> <button>Resume</button></form>",
                    csrf_field(&s.access.csrf),
                    p.seconds_left,
                    b = esc(&p.budget)
                );
            }
        }
    }
    body.push_str("</section>");
    Ok(layout("Overview", &s.access.csrf, &body).into_response())
}

/// `POST /budget/resume`: the same operation as `embq budget resume --budget`.
pub async fn resume(State(s): State<Shared>, body: Bytes) -> Page {
    let f = super::form::Fields::parse(&body);
    if !s.access.csrf_ok(f.one("csrf").unwrap_or("")) {
        return Ok(guard::csrf_refused());
    }
    let Some(url) = &s.budgets_url else {
        return Err(PageError::Bad("a SQLite queue has no fleet budget to resume".into()));
    };
    limiter::resume_fleet(url, f.one("budget"))
        .await
        .map_err(|limiter::LimiterError::Unavailable(m)| PageError::Queue(crate::queue::QueueError::Unavailable(m)))?;
    Ok(Redirect::to("/").into_response())
}
