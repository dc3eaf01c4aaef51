//! `embq enqueue [FILE]`: validate a JSONL input completely, then queue it in chunks.
//!
//! The input is streamed twice, a line at a time: once to validate every line (nothing is
//! queued if one is bad, unless `--skip-invalid`), once to queue the jobs in chunks of
//! [`CHUNK_JOBS`]. Memory holds one chunk, never the input; standard input is spooled to an
//! unnamed temporary file for the second pass.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Read, Seek, Write};
use std::path::PathBuf;

use tokio::sync::mpsc;

use super::CliError;
use crate::config::Config;
use crate::queue::{EnqueueReport, Lane, NewJob};

/// Jobs handed to the store at once: its own transaction (SQLite's commit interval too).
const CHUNK_JOBS: usize = 20_000;

/// Invalid lines listed in the error; the rest are counted.
const SHOWN_ERRORS: usize = 20;

/// `embq enqueue` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// JSONL file, one job per line: {"source_type", "source_id", "text", "content_type"?, "priority"?,
    /// "metadata"?}. Reads standard input when absent or "-".
    pub file: Option<PathBuf>,
    /// Queue the valid lines and report the invalid ones instead of refusing the whole input.
    #[arg(long)]
    pub skip_invalid: bool,
    /// online | batch: the lane of every job of the input, over each line's own `lane`
    /// (batch: the OpenAI Batch API at half price, done within 24 hours; needs BATCH_LANE=on
    /// on the workers, else the jobs are embedded online).
    #[arg(long, value_parser = parse_lane)]
    pub lane: Option<Lane>,
}

fn parse_lane(v: &str) -> Result<Lane, String> {
    Lane::ALL.into_iter().find(|l| l.as_str() == v).ok_or_else(|| "must be online or batch".to_string())
}

/// A parsed input: the jobs and the problems, by line number.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Valid jobs in input order.
    pub jobs: Vec<NewJob>,
    /// `line N: why` for each invalid line.
    pub errors: Vec<String>,
}

/// One line's verdict; `None` for a blank line.
fn parse_line(line_no: usize, raw: &[u8]) -> Option<Result<NewJob, String>> {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    if raw.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let line = match std::str::from_utf8(raw) {
        Ok(l) => l,
        Err(e) => return Some(Err(format!("line {line_no}: not valid UTF-8 ({e})"))),
    };
    Some(match serde_json::from_str::<NewJob>(line) {
        Ok(job) => job.validate().map(|()| job).map_err(|why| format!("line {line_no}: {why}")),
        Err(e) => Err(format!("line {line_no}: {e}")),
    })
}

/// Parses JSONL bytes; blank lines are skipped.
pub fn parse_jsonl(input: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    for (i, raw) in input.split(|b| *b == b'\n').enumerate() {
        match parse_line(i + 1, raw) {
            Some(Ok(job)) => out.jobs.push(job),
            Some(Err(e)) => out.errors.push(e),
            None => {}
        }
    }
    out
}

/// Reads `reader` a line at a time, handing each raw line (newline included) and its number
/// to `f`.
fn for_each_line(mut reader: impl BufRead, mut f: impl FnMut(usize, &[u8]) -> bool) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut line_no = 0;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        line_no += 1;
        if !f(line_no, &buf) {
            return Ok(());
        }
    }
}

/// What the validating pass found.
#[derive(Debug, Default)]
struct Survey {
    valid: u64,
    invalid: u64,
    /// The first [`SHOWN_ERRORS`] problems.
    shown: Vec<String>,
}

impl Survey {
    fn record(&mut self, verdict: Option<Result<NewJob, String>>) {
        match verdict {
            Some(Ok(_)) => self.valid += 1,
            Some(Err(e)) => {
                self.invalid += 1;
                if self.shown.len() < SHOWN_ERRORS {
                    self.shown.push(e);
                }
            }
            None => {}
        }
    }

    fn listing(&self) -> String {
        let more = self.invalid.saturating_sub(self.shown.len() as u64);
        self.shown.join("\n  ") + &if more > 0 { format!("\n  … and {more} more") } else { String::new() }
    }
}

/// Where the second pass reads: the named file again, or the spooled standard input.
enum Source {
    Path(PathBuf),
    Spool(File),
}

impl Source {
    fn reader(self) -> Result<BufReader<File>, CliError> {
        match self {
            Source::Path(p) => File::open(&p)
                .map(BufReader::new)
                .map_err(|e| CliError::Input(format!("cannot read {}: {e}", p.display()))),
            Source::Spool(f) => Ok(BufReader::new(f)),
        }
    }
}

/// The validating pass (blocking): every line checked, standard input spooled.
fn survey(file: &Option<PathBuf>) -> Result<(Source, Survey), CliError> {
    let mut survey = Survey::default();
    match file {
        Some(p) if p.as_os_str() != "-" => {
            let f = File::open(p).map_err(|e| CliError::Input(format!("cannot read {}: {e}", p.display())))?;
            for_each_line(BufReader::new(f), |n, raw| {
                survey.record(parse_line(n, raw));
                true
            })
            .map_err(|e| CliError::Input(format!("cannot read {}: {e}", p.display())))?;
            Ok((Source::Path(p.clone()), survey))
        }
        _ => {
            let spool_err = |e: std::io::Error| CliError::Other(format!("cannot spool standard input: {e}"));
            let mut spool = BufWriter::new(tempfile::tempfile().map_err(spool_err)?);
            let mut write_err = None;
            for_each_line(std::io::stdin().lock(), |n, raw| {
                survey.record(parse_line(n, raw));
                write_err = spool.write_all(raw).err();
                write_err.is_none()
            })
            .map_err(|e| CliError::Input(format!("cannot read standard input: {e}")))?;
            if let Some(e) = write_err {
                return Err(spool_err(e));
            }
            let mut f = spool.into_inner().map_err(|e| spool_err(e.into_error()))?;
            f.rewind().map_err(spool_err)?;
            Ok((Source::Spool(f), survey))
        }
    }
}

/// The queueing pass (blocking): valid jobs in chunks of [`CHUNK_JOBS`], in input order.
fn send_chunks(reader: impl Read, tx: mpsc::Sender<Vec<NewJob>>) -> std::io::Result<()> {
    let mut chunk = Vec::with_capacity(CHUNK_JOBS);
    let mut open = true;
    for_each_line(BufReader::new(reader), |n, raw| {
        if let Some(Ok(job)) = parse_line(n, raw) {
            chunk.push(job);
            if chunk.len() == CHUNK_JOBS {
                open = tx.blocking_send(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_JOBS))).is_ok();
            }
        }
        open
    })?;
    if open && !chunk.is_empty() {
        let _ = tx.blocking_send(chunk);
    }
    Ok(())
}

/// Runs `embq enqueue`.
pub async fn run(cfg: Config, args: Args) -> Result<(), CliError> {
    let file = args.file.clone();
    let (source, survey) =
        tokio::task::spawn_blocking(move || survey(&file)).await.map_err(|e| CliError::Other(e.to_string()))??;
    if survey.invalid > 0 {
        if !args.skip_invalid {
            return Err(CliError::Input(format!(
                "{} invalid line(s); nothing was queued (use --skip-invalid to queue the valid ones):\n  {}",
                survey.invalid,
                survey.listing()
            )));
        }
        eprintln!("skipping {} invalid line(s):\n  {}", survey.invalid, survey.listing());
    }
    if survey.valid == 0 {
        println!("queued 0 jobs (the input held none)");
        return Ok(());
    }
    let q = crate::queue::connect(&cfg.store()).await?;
    q.check_schema().await?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(survey.valid);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} jobs {per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let started = std::time::Instant::now();
    // One chunk queued while the next is read: memory holds two chunks at most.
    let (tx, mut rx) = mpsc::channel::<Vec<NewJob>>(1);
    let reader = source.reader()?;
    let producer = tokio::task::spawn_blocking(move || send_chunks(reader, tx));
    let mut total = EnqueueReport::default();
    while let Some(mut chunk) = rx.recv().await {
        if let Some(lane) = args.lane {
            chunk.iter_mut().for_each(|j| j.lane = lane);
        }
        let before = total.inserted + total.replaced;
        let bar2 = bar.clone();
        let r = q
            .enqueue(&chunk, &move |n| {
                if let Some(b) = &bar2 {
                    b.set_position(before + n);
                }
            })
            .await;
        match r {
            Ok(r) => {
                total.inserted += r.inserted;
                total.replaced += r.replaced;
            }
            Err(e) => {
                eprintln!(
                    "queued {before} of {} jobs before this error; enqueueing the same input again is safe \
                     (pending texts are replaced, unchanged texts cost no provider call)",
                    survey.valid
                );
                return Err(e.into());
            }
        }
    }
    producer
        .await
        .map_err(|e| CliError::Other(e.to_string()))?
        .map_err(|e| CliError::Input(format!("cannot read the input again: {e}")))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let queued = total.inserted + total.replaced;
    println!(
        "queued {queued} jobs ({} new, {} replaced a pending job's text) in {}",
        total.inserted,
        total.replaced,
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
    fn the_second_pass_sends_valid_jobs_in_order_in_bounded_chunks() {
        let n = CHUNK_JOBS * 2 + 7;
        let mut input = String::new();
        for i in 0..n {
            input += &format!("{{\"source_type\":\"r\",\"source_id\":\"{i}\",\"text\":\"t{i}\"}}\n");
            if i == 5 {
                input += "not json\n\n";
            }
        }
        let (tx, mut rx) = mpsc::channel(1);
        let reader = std::thread::spawn(move || send_chunks(std::io::Cursor::new(input.into_bytes()), tx));
        let mut sizes = Vec::new();
        let mut next = 0usize;
        while let Some(chunk) = rx.blocking_recv() {
            sizes.push(chunk.len());
            for job in chunk {
                assert_eq!(job.source_id, next.to_string(), "input order");
                next += 1;
            }
        }
        assert!(reader.join().expect("reader thread").is_ok());
        assert_eq!(sizes, vec![CHUNK_JOBS, CHUNK_JOBS, 7], "invalid and blank lines skipped");
    }

    #[test]
    fn the_survey_counts_every_line_and_lists_the_first_problems() {
        let mut s = Survey::default();
        let mut input = String::from("{\"source_type\":\"r\",\"source_id\":\"1\",\"text\":\"a\"}\n");
        input += &"oops\n".repeat(25);
        for_each_line(std::io::Cursor::new(input), |n, raw| {
            s.record(parse_line(n, raw));
            true
        })
        .expect("in-memory read");
        assert_eq!((s.valid, s.invalid, s.shown.len()), (1, 25, SHOWN_ERRORS));
        assert!(s.shown[0].starts_with("line 2: "), "{:?}", s.shown);
        assert!(s.listing().ends_with("… and 5 more"), "{}", s.listing());
    }

    #[test]
    fn invalid_utf8_is_reported() {
        let p = parse_jsonl(b"\xff\xfe\n");
        assert!(p.errors[0].contains("line 1: not valid UTF-8"));
    }
}
