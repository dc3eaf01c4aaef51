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
            let budgets = limiter::fleet_budgets(url).await.map_err(|limiter::LimiterError::Unavailable(m)| {
                PageError::Queue(crate::queue::QueueError::Unavailable(m))
            })?;
            budget_table(&mut body, &budgets, &s.access.csrf);
        }
    }
    body.push_str("</section>");
    Ok(layout("Overview", &s.access.csrf, &body).into_response())
}

/// The fleet budgets: what was left at the last update, the last minute's grants, calls in
/// flight, and a pause with its cause and a resume button.
fn budget_table(body: &mut String, budgets: &[limiter::FleetBudget], csrf: &str) {
    if budgets.is_empty() {
        body.push_str("<p>No fleet budget yet: workers create theirs with their first provider call.</p>");
    }
    if !budgets.iter().any(|b| b.paused_seconds_left.is_some()) {
        body.push_str("<p>No fleet budget is paused.</p>");
    }
    if budgets.is_empty() {
        return;
    }
    body.push_str(
        "<table><tr><th>budget</th><th>limits look like</th><th>requests left</th><th>tokens left</th>\
         <th>granted in the last minute</th><th>in flight</th><th>pause</th></tr>",
    );
    for b in budgets {
        let pause = match b.paused_seconds_left {
            None => "none".to_string(),
            Some(left) => format!(
                "<form method=\"post\" action=\"/budget/resume\" class=\"pause\">{}<input type=\"hidden\" name=\"budget\" value=\"{}\">\
                 <span>paused by the provider (a 429 or an exhausted quota), {left:.0} s left</span> <button>Resume</button></form>",
                csrf_field(csrf),
                esc(&b.budget)
            ),
        };
        let _ = write!(
            body,
            "<tr title=\"levels as of {:.0} s ago\"><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.0}</td>\
             <td>{:.0} requests, {:.0} tokens</td><td>{}</td><td>{pause}</td></tr>",
            b.updated_seconds_ago,
            esc(&b.budget),
            esc(&b.shape),
            b.requests_left,
            b.tokens_left,
            b.requests_last_minute,
            b.tokens_last_minute,
            b.in_flight,
        );
    }
    body.push_str(
        "</table><p class=\"note\">Levels are as the workers last left them; the buckets refill between calls.</p>",
    );
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
