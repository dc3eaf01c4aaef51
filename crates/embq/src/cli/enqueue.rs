//! `embq enqueue [FILE]`: validate a JSONL file completely, then queue it in one transaction.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use super::CliError;
use crate::config::Config;
use crate::queue::NewJob;

/// `embq enqueue` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// JSONL file, one job per line: {"source_type", "source_id", "text", "content_type"?, "priority"?,
    /// "metadata"?}. Reads standard input when absent or "-".
    pub file: Option<PathBuf>,
    /// Queue the valid lines and report the invalid ones instead of refusing the whole input.
    #[arg(long)]
    pub skip_invalid: bool,
}

/// A parsed input: the jobs and the problems, by line number.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Valid jobs in input order.
    pub jobs: Vec<NewJob>,
    /// `line N: why` for each invalid line.
    pub errors: Vec<String>,
}

/// Parses JSONL bytes; blank lines are skipped.
pub fn parse_jsonl(input: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    for (i, raw) in input.split(|b| *b == b'\n').enumerate() {
        let line_no = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line = match std::str::from_utf8(raw) {
            Ok(l) => l,
            Err(e) => {
                out.errors.push(format!("line {line_no}: not valid UTF-8 ({e})"));
                continue;
            }
        };
        match serde_json::from_str::<NewJob>(line) {
            Ok(job) => match job.validate() {
                Ok(()) => out.jobs.push(job),
                Err(why) => out.errors.push(format!("line {line_no}: {why}")),
            },
            Err(e) => out.errors.push(format!("line {line_no}: {e}")),
        }
    }
    out
}

fn read_input(file: &Option<PathBuf>) -> Result<Vec<u8>, CliError> {
    let mut buf = Vec::new();
    match file {
        Some(p) if p.as_os_str() != "-" => {
            std::fs::File::open(p)
                .and_then(|mut f| f.read_to_end(&mut buf))
                .map_err(|e| CliError::Input(format!("cannot read {}: {e}", p.display())))?;
        }
        _ => {
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| CliError::Input(format!("cannot read standard input: {e}")))?;
        }
    }
    Ok(buf)
}

/// Runs `embq enqueue`.
pub async fn run(cfg: Config, args: Args) -> Result<(), CliError> {
    let input = tokio::task::spawn_blocking({
        let f = args.file.clone();
        move || read_input(&f)
    })
    .await
    .map_err(|e| CliError::Other(e.to_string()))??;
    let parsed = parse_jsonl(&input);
    if !parsed.errors.is_empty() {
        let shown: Vec<&str> = parsed.errors.iter().take(20).map(String::as_str).collect();
        let more = parsed.errors.len().saturating_sub(shown.len());
        let list = shown.join("\n  ") + &if more > 0 { format!("\n  … and {more} more") } else { String::new() };
        if !args.skip_invalid {
            return Err(CliError::Input(format!(
                "{} invalid line(s); nothing was queued (use --skip-invalid to queue the valid ones):\n  {list}",
                parsed.errors.len()
            )));
        }
        eprintln!("skipping {} invalid line(s):\n  {list}", parsed.errors.len());
    }
    if parsed.jobs.is_empty() {
        println!("queued 0 jobs (the input held none)");
        return Ok(());
    }
    let q = crate::queue::connect(&cfg).await?;
    q.check_schema().await?;
    let total = parsed.jobs.len() as u64;
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} jobs {per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let bar2 = bar.clone();
    let started = std::time::Instant::now();
    let report = q
        .enqueue(&parsed.jobs, &move |n| {
            if let Some(b) = &bar2 {
                b.set_position(n);
            }
        })
        .await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let queued = report.inserted + report.replaced;
    println!(
        "queued {queued} jobs ({} new, {} replaced a pending job's text) in {}",
        report.inserted,
        report.replaced,
        super::secs(started.elapsed())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_line_and_valid_lines_parse() {
        let input = b"{\"source_type\":\"r\",\"source_id\":\"1\",\"text\":\"a\"}\n\
                      \n\
                      {\"source_type\":\"r\",\"source_id\":\"2\",\"text\":\"\"}\n\
                      not json\n\
                      {\"source_type\":\"r\",\"source_id\":\"3\",\"text\":\"b\",\"extra\":1}\r\n\
                      {\"source_type\":\"r\",\"source_id\":4,\"text\":\"c\",\"priority\":2}";
        let p = parse_jsonl(input);
        assert_eq!(p.jobs.len(), 2);
        assert_eq!(p.jobs[1].source_id, "4");
        assert_eq!(p.jobs[1].priority, 2);
        assert_eq!(p.errors.len(), 3, "{:?}", p.errors);
        assert!(p.errors[0].starts_with("line 3: text must not be empty"));
        assert!(p.errors[1].starts_with("line 4: expected"));
        assert!(p.errors[2].starts_with("line 5: unknown field `extra`"));
    }

    #[test]
    fn invalid_utf8_is_reported() {
        let p = parse_jsonl(b"\xff\xfe\n");
        assert!(p.errors[0].contains("line 1: not valid UTF-8"));
    }
}
