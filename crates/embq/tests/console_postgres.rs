//! `embq console` on PostgreSQL: the fleet budget a provider paused is shown and resumed from the
//! page (the operation `embq budget resume` runs), only with the CSRF token; and every page and
//! a dead-letter retry and purge through PgBouncer in transaction mode, as on Supabase's pooler.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use embq::queue::Clock;
use sqlx::Connection;

const BIN: &str = env!("CARGO_BIN_EXE_embq");
const BUDGET: &str = "openai:text-embedding-3-small:0123abcd";

/// The console process, killed (by its PID) when dropped.
struct Console(Child);

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `embq console` on a free loopback port with `env`; returns it and its base URL.
fn start_console(env: &[(&str, &str)]) -> (Console, String) {
    let mut child = Command::new(BIN)
        .env_clear()
        .envs(env.iter().copied())
        .args(["console", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the console");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("address");
    let console = Console(child);
    let base = line.trim().strip_prefix("embq console on ").unwrap_or_default().to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{line:?}");
    (console, base)
}

/// The CSRF token a console page carries.
fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" content=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the page names its CSRF token")
        .to_string()
}

async fn paused(url: &str) -> i64 {
    let n: Vec<(i64,)> = support::rows(url, "SELECT count(*) FROM embq.rate_budgets WHERE paused_until > now()").await;
    n[0].0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_fleet_budget_is_resumed_from_the_overview() {
    let url = support::pg::fresh_pg_db().await;
    let env = [("DATABASE_URL", url.as_str()), ("EMBEDDING_PROVIDER", "hash"), ("RUST_LOG", "warn")];
    let out = Command::new(BIN).env_clear().envs(env).arg("migrate").output().expect("migrate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The row a provider's 429 with a long retry-after leaves behind (see limiter/postgres.rs).
    let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::query("INSERT INTO embq.rate_budgets (key, paused_until) VALUES ($1, now() + interval '10 minutes')")
        .bind(BUDGET)
        .execute(&mut c)
        .await
        .expect("pause");
    // A busy budget beside it: levels as a worker left them, two grants in the last minute (one
    // still in flight) and one older.
    for sql in [
        "INSERT INTO embq.rate_budgets (key, requests, tokens, shape) VALUES ('gemini:busy', 42, 9000, 'bucket')",
        "INSERT INTO embq.rate_grants (key, at, requests, tokens, in_flight) VALUES
            ('gemini:busy', now(), 1, 500, true), ('gemini:busy', now() - interval '10 seconds', 1, 300, false),
            ('gemini:busy', now() - interval '5 minutes', 1, 7000, false)",
    ] {
        sqlx::query(sql).execute(&mut c).await.expect("busy budget");
    }

    let (console, base) = start_console(&env);

    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let page = http.get(&base).send().await.expect("GET /").text().await.expect("body");
    assert!(page.contains(BUDGET) && page.contains("Resume"), "the overview shows the pause");
    assert!(page.contains("paused by the provider (a 429 or an exhausted quota)"), "and its cause");
    let busy =
        page.split("<td>gemini:busy</td>").nth(1).and_then(|r| r.split("</tr>").next()).expect("the busy budget's row");
    assert!(
        busy.starts_with(
            "<td>bucket</td><td>42</td><td>9000</td><td>2 requests, 800 tokens</td><td>1</td><td>none</td>"
        ),
        "left, last minute and in flight: {busy}"
    );
    let csrf = csrf_of(&page);
    let post = |body: String| {
        http.post(format!("{base}budget/resume"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let refused = post(format!("budget={BUDGET}")).await.expect("POST");
    assert_eq!(refused.status(), 403);
    assert_eq!(paused(&url).await, 1, "a refused action resumes nothing");
    let resumed = post(format!("csrf={csrf}&budget={BUDGET}")).await.expect("POST");
    assert_eq!(resumed.status(), 303);
    assert_eq!(paused(&url).await, 0);
    let after = http.get(&base).send().await.expect("GET /").text().await.expect("body");
    assert!(after.contains("No fleet budget is paused."));
    drop(console);
}

async fn state_of(url: &str, id: i64) -> Option<String> {
    let rows: Vec<(String,)> = support::rows(url, &format!("SELECT state FROM embq.jobs WHERE id = {id}")).await;
    rows.into_iter().next().map(|r| r.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_and_the_dead_letter_actions_work_through_pgbouncer() {
    // As on Supabase: the owner role, pgvector in `extensions`, the console on the transaction pooler.
    let direct = support::pg::fresh_supabase_db().await;
    let db = url::Url::parse(&direct).expect("url").path().trim_start_matches('/').to_string();
    let mut pooled = url::Url::parse(&support::pg::with_db(&support::pg::pgbouncer_admin_url(), &db)).expect("url");
    pooled.set_username(support::pg::OWNER_ROLE).expect("user");
    let migrate = Command::new(BIN)
        .env_clear()
        .envs([("DATABASE_URL", direct.as_str()), ("EMBEDDING_PROVIDER", "hash"), ("RUST_LOG", "warn")])
        .arg("migrate")
        .output()
        .expect("migrate");
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));
    let q = support::store(&direct, Clock::System).await;
    let jobs = support::jobs_named(3, "r");
    let dead = support::dead_letter(&q, &jobs, &["HTTP 400: bad input", "HTTP 400: bad input", "timeout"]).await;

    let env = [
        ("DATABASE_URL", pooled.as_str()),
        ("DATABASE_POOL_MODE", "transaction"),
        ("EMBEDDING_PROVIDER", "hash"),
        ("RUST_LOG", "warn"),
    ];
    let (console, base) = start_console(&env);
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let get = |path: String| {
        let http = http.clone();
        async move {
            let r = http.get(path.clone()).send().await.expect("GET");
            assert_eq!(r.status(), 200, "GET {path}");
            r.text().await.expect("body")
        }
    };
    let overview = get(base.clone()).await;
    let listing = get(format!("{base}jobs?state=dead")).await;
    assert!(dead.iter().all(|id| listing.contains(&format!("/jobs/{id}\""))), "every dead job is listed");
    let one = get(format!("{base}jobs/{}", dead[2])).await;
    assert!(one.contains("timeout"), "a job's page shows its last error");
    let letters = get(format!("{base}dead")).await;
    assert!(letters.contains("HTTP 400: bad input") && letters.contains("timeout"), "the dead letters, grouped");
    get(format!("{base}search?q=r")).await;

    let csrf = csrf_of(&overview);
    let post = |path: &str, body: String| {
        http.post(format!("{base}{path}")).header("content-type", "application/x-www-form-urlencoded").body(body).send()
    };
    let confirm = post("dead/confirm", format!("csrf={csrf}&action=retry&group=HTTP+400%3A+bad+input"))
        .await
        .expect("POST confirm");
    assert_eq!(confirm.status(), 200);
    assert!(confirm.text().await.expect("body").contains("<strong id=\"count\">2</strong>"), "the group holds 2");
    let retried =
        post("dead/apply", format!("csrf={csrf}&action=retry&ids={},{}", dead[0], dead[1])).await.expect("POST apply");
    assert_eq!(retried.status(), 200);
    assert!(retried.text().await.expect("body").contains("2 dead-lettered job(s) queued again"));
    assert_eq!(state_of(&direct, dead[0]).await.as_deref(), Some("ready"));
    assert_eq!(state_of(&direct, dead[1]).await.as_deref(), Some("ready"));
    let purged = post("dead/apply", format!("csrf={csrf}&action=purge&ids={}", dead[2])).await.expect("POST apply");
    assert_eq!(purged.status(), 200);
    assert_eq!(state_of(&direct, dead[2]).await, None, "purged for good");
    drop(console);
}
