//! The Prometheus text a worker serves, read into the counters the policy judges.

/// The worker counters and gauges the controller reads from one scrape.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkerMetrics {
    pub processed: f64,
    pub failed: f64,
    /// Cumulative `(le, count)` of embedding_processing_duration_seconds, sorted by `le`.
    pub duration_buckets: Vec<(f64, f64)>,
    pub queue_depth: Option<f64>,
    pub inflight: Option<f64>,
    pub rate_limited: f64,
    pub rate_limit_wait_seconds: f64,
    /// embedding_worker_errors_total of the kinds with a cause outside the worker.
    pub outside_errors: f64,
}

/// `embedding_worker_errors_total` kinds whose cause is the provider, the database or the
/// input. A kind not listed (a new one) counts against the worker.
pub const OUTSIDE_ERROR_KINDS: &[&str] = &[
    // provider
    "rate_limited",
    "quota_exhausted",
    "transient",
    "invalid_request",
    "invalid_response",
    "unauthorized",
    // database
    "database",
    "schema",
    // input
    "rejected",
    "invalid",
    "invalid_input",
    "too_large",
];

/// Parses Prometheus text (or OpenMetrics) exposition, summing over label sets the
/// controller does not split by. Lines it cannot read are skipped, not fatal: one odd
/// metric must not blind the controller to the rest.
pub fn parse_worker_metrics(text: &str) -> WorkerMetrics {
    let mut m = WorkerMetrics::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, labels, value)) = parse_sample(line) else {
            continue;
        };
        match name {
            "embedding_jobs_processed_total" => m.processed += value,
            "embedding_jobs_failed_total" => m.failed += value,
            "embedding_provider_rate_limited_total" => m.rate_limited += value,
            "embedding_rate_limit_wait_seconds_total" => m.rate_limit_wait_seconds += value,
            "embedding_worker_errors_total"
                if labels.iter().any(|(k, v)| k == "kind" && OUTSIDE_ERROR_KINDS.contains(&v.as_str())) =>
            {
                m.outside_errors += value
            }
            "embedding_queue_depth" => m.queue_depth = Some(m.queue_depth.map_or(value, |d: f64| d.max(value))),
            "embedding_inflight_jobs" => m.inflight = Some(m.inflight.unwrap_or(0.0) + value),
            "embedding_processing_duration_seconds_bucket" => {
                let Some(le) = labels.iter().find(|(k, _)| k == "le").and_then(|(_, v)| parse_value(v)) else {
                    continue;
                };
                match m.duration_buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, c)) => *c += value,
                    None => m.duration_buckets.push((le, value)),
                }
            }
            _ => {}
        }
    }
    m.duration_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    m
}

/// Label pairs of one sample, in order.
type Labels = Vec<(String, String)>;

/// One sample line: `name{k="v",...} value [timestamp]`.
fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => break i,
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut val = String::new();
                    loop {
                        match chars.next()?.1 {
                            '\\' => match chars.next()?.1 {
                                'n' => val.push('\n'),
                                other => val.push(other),
                            },
                            '"' => break,
                            other => val.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), val));
                }
                other => key.push(other),
            }
        };
        rest = &body[end + 1..];
    }
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some((name, labels, value))
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// The `q` quantile of the observations between two cumulative bucket snapshots, with
/// linear interpolation inside the bucket (as Prometheus' histogram_quantile does).
/// `None` when fewer than `min_count` observations fell in between, or the buckets
/// changed shape (a restarted worker with other buckets).
pub fn quantile_between(q: f64, before: &[(f64, f64)], after: &[(f64, f64)], min_count: u64) -> Option<f64> {
    if before.len() != after.len() && !before.is_empty() {
        return None;
    }
    let mut deltas = Vec::with_capacity(after.len());
    for (i, (le, c)) in after.iter().enumerate() {
        let prev = match before.get(i) {
            Some((ple, pc)) if ple == le => *pc,
            Some(_) => return None,
            None => 0.0,
        };
        deltas.push((*le, (c - prev).max(0.0)));
    }
    let total = deltas.last().map(|(_, c)| *c)?;
    if total < min_count as f64 || total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in &deltas {
        if count >= rank {
            if le.is_infinite() {
                // Above the highest finite bucket: the best known bound is that bucket's edge.
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(lower.0 + (le - lower.0) * (rank - lower.1) / in_bucket);
        }
        lower = (le, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = r#"# HELP embedding_jobs_processed Jobs embedded and stored.
# TYPE embedding_jobs_processed counter
embedding_jobs_processed_total 120
embedding_jobs_failed_total{provider="openai"} 3
embedding_jobs_failed_total{provider="gemini"} 2
embedding_worker_errors_total{kind="provider"} 4
embedding_provider_rate_limited_total{provider="openai"} 7
embedding_rate_limit_wait_seconds_total{provider="openai"} 12.5
embedding_queue_depth 42
embedding_inflight_jobs 3
embedding_processing_duration_seconds_bucket{le="0.5"} 10
embedding_processing_duration_seconds_bucket{le="1.0"} 50
embedding_processing_duration_seconds_bucket{le="+Inf"} 60
embedding_processing_duration_seconds_sum 70.5
embedding_processing_duration_seconds_count 60
odd_metric{label="with \"quotes\", and commas"} 1
not a sample line
# EOF
"#;

    #[test]
    fn worker_exposition_is_read() {
        let m = parse_worker_metrics(EXPOSITION);
        assert_eq!(m.processed, 120.0);
        assert_eq!(m.failed, 5.0);
        assert_eq!(m.rate_limited, 7.0);
        assert_eq!(m.rate_limit_wait_seconds, 12.5);
        assert_eq!(m.queue_depth, Some(42.0));
        assert_eq!(m.inflight, Some(3.0));
        assert_eq!(m.duration_buckets, vec![(0.5, 10.0), (1.0, 50.0), (f64::INFINITY, 60.0)]);
    }

    #[test]
    fn sample_lines_parse_labels_with_escapes() {
        let (name, labels, v) = parse_sample(r#"m{a="x\"y",b="1,2"} 3.5 1700000000"#).expect("parses");
        assert_eq!(name, "m");
        assert_eq!(labels, vec![("a".into(), "x\"y".into()), ("b".into(), "1,2".into())]);
        assert_eq!(v, 3.5);
        assert!(parse_sample(r#"m{a="unterminated} 1"#).is_none());
        assert!(parse_sample("m").is_none());
    }

    #[test]
    fn quantiles_come_from_bucket_deltas() {
        let b = |v: &[(f64, f64)]| v.to_vec();
        let inf = f64::INFINITY;
        type Buckets = Vec<(f64, f64)>;
        let cases: Vec<(&str, Buckets, Buckets, u64, Option<f64>)> = vec![
            ("all in the first bucket", vec![], b(&[(1.0, 100.0), (inf, 100.0)]), 1, Some(0.95)),
            (
                "delta, not lifetime: old fast jobs do not hide new slow ones",
                b(&[(1.0, 1000.0), (10.0, 1000.0), (inf, 1000.0)]),
                b(&[(1.0, 1000.0), (10.0, 1100.0), (inf, 1100.0)]),
                1,
                Some(1.0 + 9.0 * 0.95),
            ),
            ("too few jobs in the window", b(&[(1.0, 10.0), (inf, 10.0)]), b(&[(1.0, 15.0), (inf, 15.0)]), 20, None),
            ("beyond the last finite bucket", vec![], b(&[(1.0, 0.0), (5.0, 0.0), (inf, 50.0)]), 1, Some(5.0)),
            ("bucket layout changed", b(&[(1.0, 1.0), (inf, 1.0)]), b(&[(2.0, 50.0), (inf, 50.0)]), 1, None),
        ];
        for (name, before, after, min, want) in cases {
            let got = quantile_between(0.95, &before, &after, min);
            match (got, want) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "{name}: {g} != {w}"),
                _ => assert_eq!(got, want, "{name}"),
            }
        }
    }
}
