//! The `embq` command line: bad input gets a clear error and a non-zero exit, and nothing is half-done.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_embq");

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("tempdir") }
    }
    fn url(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("q.db").display())
    }
    fn cmd(&self, envs: &[(&str, &str)]) -> Command {
        let mut c = Command::new(BIN);
        c.env_clear()
            .current_dir(self.dir.path())
            .env("DATABASE_URL", self.url())
            .env("RUST_LOG", "warn")
            .envs(envs.iter().copied());
        c
    }
    fn run(&self, envs: &[(&str, &str)], args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .cmd(envs)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn embq");
        child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
        child.wait_with_output().expect("wait")
    }
    fn ready(&self) -> u64 {
        let out = self.run(&[], &["queue", "stats", "--json"], "");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
        v["ready"].as_u64().expect("ready count")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const GOOD: &str = r#"{"source_type":"receipt","source_id":"1","text":"coffee 4.50"}"#;

#[test]
fn malformed_lines_are_reported_by_number_and_nothing_is_queued() {
    let s = Sandbox::new();
    assert!(s.run(&[], &["migrate"], "").status.success());
    let cases = [
        ("not json at all", "line 2: expected"),
        (r#"{"source_type":"receipt","source_id":"2","text":""}"#, "line 2: text must not be empty"),
        (r#"{"source_type":"receipt","source_id":"2","text":"x","colour":"red"}"#, "line 2: unknown field `colour`"),
        (r#"{"source_id":"2","text":"x"}"#, "line 2: missing field `source_type`"),
        (r#"{"source_type":"receipt","source_id":"a\u0000b","text":"x"}"#, "line 2: source_id must not contain NUL"),
        (
            r#"{"source_type":"receipt","source_id":"2","text":"x","metadata":{"k":"\u0000"}}"#,
            "line 2: metadata must not contain NUL",
        ),
        (
            r#"{"source_type":"receipt","source_id":18446744073709551616,"text":"x"}"#,
            "is not a whole number that fits 64 bits exactly: write it as a string",
        ),
    ];
    for (bad, want) in cases {
        let input = format!("{GOOD}\n{bad}\n{GOOD}\n");
        let out = s.run(&[], &["enqueue"], &input);
        assert_eq!(out.status.code(), Some(65), "{bad}");
        let err = text(&out.stderr);
        assert!(err.contains(want), "{bad}: {err}");
        assert!(err.contains("nothing was queued"), "{err}");
        assert_eq!(s.ready(), 0, "a half-valid file queues nothing");
    }
}

#[test]
fn skip_invalid_queues_the_valid_lines() {
    let s = Sandbox::new();
    assert!(s.run(&[], &["migrate"], "").status.success());
    let input = format!("{GOOD}\n{{oops\n{}\n", GOOD.replace("\"1\"", "\"2\""));
    let out = s.run(&[], &["enqueue", "--skip-invalid"], &input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("line 2"), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("queued 2 jobs"), "{}", text(&out.stdout));
    assert_eq!(s.ready(), 2);
}

#[test]
fn bad_settings_fail_fast_naming_each_variable() {
    let s = Sandbox::new();
    let out = s.run(&[("BATCH_SIZE", "lots"), ("QUEUE_POLL_INTERVAL", "soon")], &["worker"], "");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("BATCH_SIZE: must be a whole number") && err.contains("\"lots\""), "{err}");
    assert!(err.contains("QUEUE_POLL_INTERVAL"), "{err}");
}

#[test]
fn out_of_range_settings_fail_at_start_with_the_configuration_exit_code() {
    let s = Sandbox::new();
    let cases = [
        ("MEMORY_LIMIT_MB", "1", "MEMORY_LIMIT_MB: must be a whole number from 32 to 1048576"),
        ("MEMORY_LIMIT_MB", "17592186044416", "MEMORY_LIMIT_MB: must be a whole number from 32 to 1048576"),
        ("MAX_CONCURRENT_JOBS", "2305843009213693952", "MAX_CONCURRENT_JOBS: must be a whole number from 1 to 1024"),
        ("BATCH_SIZE", "18446744073709551615", "BATCH_SIZE: must be a whole number from 1 to 100000"),
        ("MAX_ATTEMPTS", "4294967296", "MAX_ATTEMPTS: must be a whole number from 1 to 1000"),
        ("DATABASE_URL", "postgres://u@127.0.0.1:5432/db?sslmode=bogus", "DATABASE_URL: not a valid PostgreSQL URL"),
    ];
    for (var, value, want) in cases {
        for cmd in [&["config", "check"][..], &["worker", "--drain"][..]] {
            let out = s.run(&[(var, value), ("HEALTH_PORT", "0"), ("METRICS_PORT", "0")], cmd, "");
            assert_eq!(out.status.code(), Some(2), "{var}={value} {cmd:?}: {}", text(&out.stderr));
            assert!(text(&out.stderr).contains(want), "{var}={value}: {}", text(&out.stderr));
        }
    }
}

#[test]
fn unreachable_database_is_a_clear_error() {
    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s = Sandbox::new();
    let url = format!("postgres://embq:hunter2secret@127.0.0.1:{port}/embq");
    let out = s.run(&[("DATABASE_URL", &url), ("DATABASE_CONNECT_TIMEOUT", "0ms")], &["queue", "stats"], "");
    assert_eq!(out.status.code(), Some(69));
    let err = text(&out.stderr);
    assert!(err.contains("cannot connect to postgres://embq:"), "{err}");
    assert!(!err.contains("hunter2secret"), "the password never appears: {err}");
}

#[test]
fn unreachable_database_error_shows_no_password_of_any_form() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s = Sandbox::new();
    let url = format!("postgres://u:hunter2@127.0.0.1:{port}/db?password=hunter3&sslpassword=hunter4");
    let out = s.run(&[("DATABASE_URL", &url), ("DATABASE_CONNECT_TIMEOUT", "0ms")], &["queue", "stats"], "");
    assert_eq!(out.status.code(), Some(69));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains("cannot connect to postgres://u:[redacted]@127.0.0.1"), "{all}");
    for pw in ["hunter2", "hunter3", "hunter4"] {
        assert!(!all.contains(pw), "{pw} printed: {all}");
    }
}

#[test]
fn config_check_shows_no_password_of_any_url_form() {
    let s = Sandbox::new();
    let cases: [&[(&str, &str)]; 6] = [
        &[("DATABASE_URL", "postgres://u:pw-do-not-print@127.0.0.1:5432/x")],
        &[("DATABASE_URL", "postgresql://u@127.0.0.1/db?password=pw-do-not-print")],
        &[("DATABASE_URL", "postgres://u@127.0.0.1/db?sslpassword=pw-do-not-print&sslkey=/keys/client.key")],
        &[("DATABASE_URL", "postgres://u:pw%2Ddo-not-print@127.0.0.1/db?password=pw%2Ddo%2Dnot%2Dprint")],
        &[
            ("DATABASE_URL", "postgres://u@127.0.0.1/db"),
            ("DATABASE_LISTEN_URL", "postgres://u:pw-do-not-print@127.0.0.1/db?password=pw-do-not-print"),
        ],
        &[
            ("EMBEDDING_PROVIDER", "openai-compatible"),
            ("OPENAI_BASE_URL", "http://u:pw-do-not-print@127.0.0.1:8081"),
            ("GEMINI_BASE_URL", "https://u:pw-do-not-print@127.0.0.1:8443"),
        ],
    ];
    for envs in cases {
        for args in [&["config", "check"][..], &["config", "check", "--json"][..]] {
            let out = s.run(envs, args, "");
            let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
            assert!(out.status.success(), "{envs:?} {args:?}: {all}");
            assert!(!all.contains("do-not-print") && !all.contains("do%2Dnot"), "{envs:?} {args:?}: {all}");
            assert!(all.contains("[redacted]"), "{envs:?} {args:?}: {all}");
        }
    }
    let out = s.run(cases[2], &["config", "check", "--json"], "");
    assert!(text(&out.stdout).contains("sslkey=/keys/client.key"), "a key path is no secret");
}

#[test]
fn worker_refuses_an_unmigrated_database() {
    let s = Sandbox::new();
    let out = s.run(&[("HEALTH_PORT", "0"), ("METRICS_PORT", "0")], &["worker", "--drain"], "");
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out.stderr).contains("run `embq migrate` first"), "{}", text(&out.stderr));
}

#[test]
fn config_check_redacts_secrets_and_vars_lists_every_variable() {
    let s = Sandbox::new();
    let out = s.run(
        &[("SHUTDOWN_TOKEN", "tok-do-not-print"), ("DATABASE_URL", "postgres://u:pw-do-not-print@127.0.0.1:5432/x")],
        &["config", "check", "--json"],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!all.contains("do-not-print"), "{all}");
    assert!(all.contains("[redacted]"));
    let vars = text(&s.run(&[], &["config", "vars"], "").stdout);
    for v in ["DATABASE_URL", "BATCH_SIZE", "HEARTBEAT_INTERVAL", "DRAIN_TIMEOUT", "SHUTDOWN_TOKEN"] {
        assert!(vars.lines().any(|l| l == v), "{v} missing from {vars}");
    }
}

#[test]
fn demo_runs_twice_and_the_second_run_costs_no_provider_call() {
    let s = Sandbox::new();
    // The hash provider keeps this test deterministic; the local model has its own tests.
    let hash = [("EMBEDDING_PROVIDER", "hash")];
    let first = s.run(&hash, &["demo"], "");
    assert!(first.status.success(), "{}", text(&first.stderr));
    let out = text(&first.stdout);
    assert!(out.contains("queued 300 jobs"), "{out}");
    assert!(out.contains("done: 300 jobs"), "{out}");
    assert!(out.contains("dead-lettered: 0"), "{out}");
    let second = s.run(&hash, &["demo"], "");
    assert!(second.status.success(), "{}", text(&second.stderr));
    let out = text(&second.stdout);
    assert!(out.contains("unchanged (already embedded, no provider call): 300"), "{out}");
    let search = s.run(&hash, &["search", "cappuccino flat white", "-k", "3"], "");
    assert!(search.status.success(), "{}", text(&search.stderr));
    let hits = text(&search.stdout);
    assert_eq!(hits.lines().count(), 3, "{hits}");
    for line in hits.lines() {
        // score, key, and a snippet of the text the vector was made from
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 3, "{line}");
        assert!(cols[0].parse::<f64>().is_ok() && cols[1].starts_with("receipt/"), "{line}");
        assert!(!cols[2].is_empty() && cols[2] != "(text no longer kept)" && cols[2].chars().count() <= 81, "{line}");
    }
    assert!(text(&search.stderr).contains("scanned in this process"), "{}", text(&search.stderr));
    let migrate = s.run(&hash, &["migrate"], "");
    assert!(text(&migrate.stdout).contains("little-endian f32 blobs"), "says how vectors are kept");
}

#[test]
fn dlq_commands_need_a_selection() {
    let s = Sandbox::new();
    assert!(s.run(&[], &["migrate"], "").status.success());
    let out = s.run(&[], &["dlq", "retry"], "");
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    let out = s.run(&[], &["dlq", "purge", "--all"], "");
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("0 dead-lettered job(s) deleted"));
    let out = s.run(&[], &["dlq", "list"], "");
    assert!(text(&out.stdout).contains("the dead-letter queue is empty"));
}

#[test]
fn in_json_log_mode_the_fatal_error_is_a_json_line_too() {
    let s = Sandbox::new();
    let cases: [(&[(&str, &str)], i32); 2] = [
        (&[("LOG_FORMAT", "json"), ("BATCH_SIZE", "0")], 2),
        (
            &[
                ("LOG_FORMAT", "json"),
                ("DATABASE_URL", "postgres://embq@127.0.0.1:1/nowhere"),
                ("DATABASE_CONNECT_TIMEOUT", "0ms"),
            ],
            69,
        ),
    ];
    for (envs, code) in cases {
        let out = s.run(envs, &["queue", "stats"], "");
        assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
        let lines: Vec<serde_json::Value> = text(&out.stderr)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
            .collect();
        let last = lines.last().expect("a fatal line");
        assert_eq!(last["level"], "ERROR");
        assert_eq!(last["exit_code"], code);
        assert!(last["error"].as_str().is_some_and(|e| !e.is_empty()), "{last}");
    }
    // Text mode keeps the plain line.
    let out = s.run(&[("BATCH_SIZE", "0")], &["queue", "stats"], "");
    assert!(text(&out.stderr).starts_with("embq: "), "{}", text(&out.stderr));
}

#[test]
fn demo_without_a_terminal_prints_plain_progress_and_keeps_batch_lines_at_debug() {
    let s = Sandbox::new();
    let info = s.run(&[("EMBEDDING_PROVIDER", "hash"), ("RUST_LOG", "info")], &["demo"], "");
    assert!(info.status.success(), "{}", text(&info.stderr));
    let err = text(&info.stderr);
    assert!(!err.contains("batch finished"), "no per-batch lines at info: {err}");
    let progress: Vec<&str> = err.lines().filter(|l| l.starts_with("progress: ")).collect();
    assert!(progress.last().is_some_and(|l| l.starts_with("progress: 300/300 jobs, ")), "{err}");
    assert!(progress.iter().all(|l| l.contains(" jobs/s, ETA ")), "{err}");
    // The same lines are one RUST_LOG away (a fresh store: a second run embeds nothing).
    let s = Sandbox::new();
    let debug = s.run(&[("EMBEDDING_PROVIDER", "hash"), ("RUST_LOG", "embq=debug")], &["demo"], "");
    assert!(debug.status.success(), "{}", text(&debug.stderr));
    assert!(text(&debug.stderr).contains("batch finished"), "{}", text(&debug.stderr));
    // `embq worker` keeps its line per batch at info.
    let s = Sandbox::new();
    assert!(s.run(&[], &["migrate"], "").status.success());
    assert!(s.run(&[], &["enqueue"], GOOD).status.success());
    let worker = s.run(&[("EMBEDDING_PROVIDER", "hash"), ("RUST_LOG", "info")], &["worker", "--drain"], "");
    assert!(worker.status.success(), "{}", text(&worker.stderr));
    assert!(text(&worker.stderr).contains("batch finished"), "{}", text(&worker.stderr));
}

#[test]
fn demo_ends_with_a_search_example_and_a_command_that_runs_from_where_it_was_started() {
    let s = Sandbox::new();
    let out = s.run(&[("EMBEDDING_PROVIDER", "hash")], &["demo"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let at = lines.iter().position(|l| l.starts_with("search \"coffee\"")).unwrap_or_else(|| panic!("{stdout}"));
    let hits = &lines[at + 1..at + 4];
    for h in hits {
        let cols: Vec<&str> = h.trim().split('\t').collect();
        assert_eq!(cols.len(), 3, "{h}");
        assert!(cols[0].parse::<f64>().is_ok() && cols[1].starts_with("receipt/") && !cols[2].is_empty(), "{h}");
    }
    // Outside any cargo project the binary's own path is what works; the command repeats the
    // provider and the SQLite file this run used.
    let last = *lines.last().expect("a last line");
    assert!(last.ends_with(&format!("{BIN} search \"coffee\"")), "{last}");
    assert!(last.contains("EMBEDDING_PROVIDER=hash") && last.contains("DATABASE_URL="), "{last}");
    let again = Command::new("sh")
        .args(["-c", last])
        .env_clear()
        .env("RUST_LOG", "warn")
        .current_dir(s.dir.path())
        .output()
        .expect("run sh");
    assert!(again.status.success(), "{last}: {}", text(&again.stderr));
    assert_eq!(text(&again.stdout).lines().count(), 5, "{}", text(&again.stdout));
    assert!(text(&again.stdout).lines().all(|l| l.split('\t').count() == 3), "{}", text(&again.stdout));
    // Inside a cargo project the demo says `cargo run`.
    std::fs::write(s.dir.path().join("Cargo.toml"), "").expect("write Cargo.toml");
    let out = s.run(&[("EMBEDDING_PROVIDER", "hash")], &["demo"], "");
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().expect("a last line");
    assert!(last.ends_with("cargo run -p embq -- search \"coffee\""), "{last}");
}
