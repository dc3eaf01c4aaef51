//! `embq console` in a real browser: headless Chromium from Debian driven by Selenium
//! (`tests/browser/console.py`), against the real binary on a SQLite store, with the database
//! checked after every action. Chromium, chromium-driver and Selenium are required: `.ci/run`
//! installs them, and without them this test fails naming what is missing (it never skips).
//! Screenshots go to the test's temporary directory; `EMBQ_CONSOLE_SCREENSHOTS=docs/console`
//! writes the README's ones instead (a test run leaves the checkout unchanged otherwise).

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use embq::queue::{no_progress, Clock, DeadSelection, JobState, NewJob};

const BIN: &str = env!("CARGO_BIN_EXE_embq");
const XSS: &str = "<img src=x onerror=alert(1)>";
const TOO_LONG: &str = "HTTP 400: input too long";

/// The console process, killed (by its PID) when dropped.
struct Console {
    child: Child,
    url: String,
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn embq(db: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db)
        .env("EMBEDDING_PROVIDER", "hash")
        .env("HEALTH_PORT", "0")
        .env("METRICS_PORT", "0")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .args(args);
    c
}

/// Starts the console and reads the address it printed (it exits at once on bad settings).
fn start_console(db: &str, env: &[(&str, &str)]) -> Console {
    let mut child = embq(db, &["console", "--listen", "127.0.0.1:0"], env)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start embq console");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout is piped");
    BufReader::new(stdout).read_line(&mut line).expect("read the console's address");
    let url = line.trim().strip_prefix("embq console on ").unwrap_or_default().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "the console did not start: {line:?}");
    Console { child, url }
}

fn drain(db: &str) {
    let out = embq(db, &["worker", "--drain"], &[]).output().expect("run the worker");
    assert!(out.status.success(), "worker --drain failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Fails loudly when the browser stack is missing, saying how to get it.
fn require_browser() {
    let missing: Vec<&str> =
        ["/usr/bin/chromium", "/usr/bin/chromedriver"].into_iter().filter(|p| !Path::new(p).exists()).collect();
    let selenium = Command::new("python3").args(["-c", "import selenium"]).status().is_ok_and(|s| s.success());
    assert!(
        missing.is_empty() && selenium,
        "the console's browser test needs Debian's chromium and chromium-driver and Selenium from PyPI \
         (`apt-get install chromium chromium-driver && pip install selenium`, as .ci/run does); \
         missing: {missing:?}, selenium importable: {selenium}"
    );
}

fn doc(id: &str, text: &str) -> NewJob {
    NewJob {
        source_type: "doc".into(),
        source_id: id.into(),
        content_type: "default".into(),
        text: text.into(),
        priority: 0,
        metadata: Some(serde_json::json!({"title": id})),
        lane: embq::queue::Lane::Online,
    }
}

/// Where the Selenium script saves its screenshots: EMBQ_CONSOLE_SCREENSHOTS (relative to the
/// repository) when set, else `scratch`.
fn screenshots(scratch: &Path) -> PathBuf {
    let dir = match std::env::var_os("EMBQ_CONSOLE_SCREENSHOTS") {
        Some(d) => Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(d),
        None => scratch.join("screenshots"),
    };
    std::fs::create_dir_all(&dir).expect("create the screenshot folder");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_chromium() {
    require_browser();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("q.db").display());
    let out = embq(&db, &["migrate"], &[]).output().expect("migrate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let q = support::store(&db, Clock::System).await;

    // Done jobs (embedded by a real worker), one of them hostile; then dead letters in two groups.
    let texts =
        [("inv-1", "invoice for twelve office chairs"), ("note-2", "meeting notes about the roadmap"), ("xss", XSS)];
    q.enqueue(&texts.map(|(k, t)| doc(k, t)), &no_progress).await.expect("enqueue");
    drain(&db);
    let dead_jobs = ["d1", "d2", "d3", "d4", "d5"].map(|k| doc(k, &format!("text of {k}")));
    let dead = support::dead_letter(
        &q,
        &dead_jobs,
        &[TOO_LONG, TOO_LONG, TOO_LONG, "HTTP 500: upstream unavailable", "timeout"],
    )
    .await;
    let xss_id = q
        .jobs(&embq::queue::JobFilter { key: Some("xss".into()), limit: 1, ..Default::default() })
        .await
        .expect("jobs")[0]
        .id;
    let before = q.stats().await.expect("stats");
    assert_eq!((before.done, before.dead), (3, 5));

    let console = start_console(&db, &[]);
    // Safety checked below the browser: the headers, and an action without the CSRF token.
    let http = reqwest::Client::new();
    let resp = http.get(&console.url).send().await.expect("GET /");
    let csp = resp.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    let forged = http
        .post(format!("{}dead/apply", console.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("action=purge&ids={}", dead[0]))
        .send()
        .await
        .expect("POST");
    assert_eq!(forged.status(), 403);
    assert_eq!(q.stats().await.expect("stats").dead, 5, "a refused action changed nothing");

    let scenario = serde_json::json!({
        "xss_id": xss_id, "retry_id": dead[3], "purge_error": "HTTP 400", "query": "invoice for twelve office chairs",
    });
    let shots = screenshots(dir.path());
    let run = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/console.py"))
        .args([console.url.as_str(), &shots.display().to_string(), &scenario.to_string()])
        .output()
        .expect("run the Selenium script");
    assert!(run.status.success(), "Selenium script failed:\n{}", String::from_utf8_lossy(&run.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&run.stdout).expect("the script prints JSON");

    // The overview's counts are the database's.
    let counts = &seen["counts"];
    for (state, n) in
        [("ready", before.ready), ("running", before.running), ("done", before.done), ("dead", before.dead)]
    {
        assert_eq!(counts[state].as_u64(), Some(n), "{state}: {seen}");
    }
    assert_eq!(seen["charts"], 2);
    assert_eq!(seen["filtered_rows"], 3, "dead jobs whose error contains 'http 400'");
    // The hostile text is shown as text; no image element, no alert.
    assert_eq!(seen["xss_text"], XSS);
    assert_eq!(seen["xss_images"], 0);
    assert_eq!(seen["xss_no_alert"], true);
    assert!(seen["vector"].as_str().is_some_and(|v| v.contains("dimensions")), "{seen}");
    // Retry one: the confirmation named one job; the database has it ready again.
    assert_eq!(seen["retry_confirm_count"], 1);
    assert_eq!(seen["retry_result"], "1 dead-lettered job(s) queued again");
    assert_eq!(q.job(dead[3]).await.expect("job").map(|j| j.summary.state), Some(JobState::Ready));
    // Purge a group: exactly its three jobs are gone, the other dead job stays.
    assert_eq!(seen["purge_confirm_count"], 3);
    assert_eq!(seen["purge_result"], "3 dead-lettered job(s) deleted");
    for id in &dead[..3] {
        assert!(q.job(*id).await.expect("job").is_none(), "job {id} was purged");
    }
    assert_eq!(q.dead_ids("timeout").await.expect("ids"), vec![dead[4]]);
    // The form without its CSRF token was refused and deleted nothing.
    assert_eq!(seen["no_csrf_heading"], "Refused");
    assert_eq!(q.stats().await.expect("stats").dead, 1);
    assert_eq!(seen["top_hit"], "doc/inv-1/default");
    assert_eq!(seen["refreshed_in_place"], true);
    assert_eq!(seen["csp_violations"], serde_json::json!([]), "the pages need nothing the CSP forbids");
    let overflow = seen["phone_overflow"].as_object().expect("phone widths measured");
    assert_eq!(overflow.len(), 5);
    assert!(overflow.values().all(|px| px.as_i64() == Some(0)), "pages wider than a 390 px screen: {overflow:?}");

    // The retried job completes.
    drain(&db);
    assert_eq!(q.job(dead[3]).await.expect("job").map(|j| j.summary.state), Some(JobState::Done));
    assert_eq!(q.purge_dead(&DeadSelection::All).await.expect("purge"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_follows_the_token_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("q.db").display());
    assert!(embq(&db, &["migrate"], &[]).output().expect("migrate").status.success());

    // Anything but loopback needs a token, refused at start naming the variable.
    let open = embq(&db, &["console", "--listen", "0.0.0.0:0"], &[]).output().expect("run");
    assert_eq!(open.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&open.stderr).contains("CONSOLE_TOKEN"),
        "{}",
        String::from_utf8_lossy(&open.stderr)
    );

    // With a token, loopback callers present it too; the pages never show it.
    let secret = "tok-console-9f2";
    let console = start_console(&db, &[("CONSOLE_TOKEN", secret)]);
    let http = reqwest::Client::new();
    let anonymous = http.get(&console.url).send().await.expect("GET");
    assert_eq!(anonymous.status(), 401);
    let wrong = http.get(&console.url).bearer_auth("nope").send().await.expect("GET");
    assert_eq!(wrong.status(), 401);
    for path in ["", "jobs", "dead", "search?q=x"] {
        let ok = http.get(format!("{}{path}", console.url)).bearer_auth(secret).send().await.expect("GET");
        assert_eq!(ok.status(), 200, "/{path}");
        assert!(!ok.text().await.expect("body").contains(secret), "/{path} shows the token");
    }
    // The login form sets the cookie that admits a browser.
    let login = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let r = login
        .post(format!("{}login", console.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={secret}"))
        .send()
        .await
        .expect("POST /login");
    let cookie = r.headers().get("set-cookie").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let pair = cookie.split(';').next().unwrap_or("").to_string();
    let admitted = login.get(&console.url).header("cookie", pair).send().await.expect("GET");
    assert_eq!(admitted.status(), 200);
}
