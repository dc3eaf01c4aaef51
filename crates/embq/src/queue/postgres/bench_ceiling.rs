//! Keeps `scripts/bench/claim-finish.sql` (the pgbench ceiling of `scripts/bench-drain.sh`)
//! running the claim and finish statements embq runs.

use super::claim::CLAIM_SQL;
use super::layout::finish_sql;
use super::pgvector::Encoding;

/// The pgbench ceiling of `scripts/bench-drain.sh`.
const CEILING: &str = include_str!("../../../../../scripts/bench/claim-finish.sql");

/// Drops `--` comments and pgbench meta-commands, and collapses whitespace.
fn normalise(sql: &str) -> String {
    let lines = sql.lines().filter(|l| !l.trim_start().starts_with('\\'));
    let code: Vec<&str> = lines.map(|l| l.split("--").next().unwrap_or_default()).collect();
    code.join(" ").split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Rewrites a statement as the ceiling runs it: the test clock off, parameters as pgbench
/// variables or the constants the ceiling uses.
fn as_ceiling(sql: &str, params: &[(&str, &str)]) -> String {
    let mut s = normalise(sql).replace("COALESCE($1::timestamptz, now())", "now()");
    for (from, to) in params {
        s = s.replace(from, to);
    }
    s
}

#[test]
fn the_ceiling_runs_the_claim_statement_embq_runs() {
    let claim = as_ceiling(
        CLAIM_SQL,
        &[("$2", ":batch"), ("$3", "'pgbench'"), ("$4", "'tok'"), ("$5", "30"), ("$6", "'hash'")],
    )
    // The ceiling wraps the UPDATE in a CTE to collect the ids for its finish.
    .replace(") UPDATE embq.jobs j SET state", "), claimed AS ( UPDATE embq.jobs j SET state");
    assert!(normalise(CEILING).contains(&claim), "scripts/bench/claim-finish.sql drifted from CLAIM_SQL:\n{claim}");
}

#[test]
fn the_ceiling_runs_the_finish_statement_embq_runs_but_for_where_vectors_come_from() {
    let finish = as_ceiling(
        &finish_sql(Encoding::Flat, "real[]", &[]),
        &[
            ("unnest($2::bigint[])", "unnest(:ids::bigint[])"),
            ("$3", "'tok'"),
            ("$4", "'hash'"),
            // The one intended difference: the ceiling reads its vectors from a table.
            ("($6::real[])[(d.ord - 1) * $5 + 1 : d.ord * $5],", "v.v,"),
            ("FROM done d ON CONFLICT", "FROM done d JOIN bench_vectors v ON v.ord = d.ord ON CONFLICT"),
            ("$5", ":dims"),
        ],
    );
    assert!(!finish.contains('$'), "every parameter is mapped: {finish}");
    assert!(
        normalise(CEILING).contains(&finish),
        "scripts/bench/claim-finish.sql drifted from the finish statement:\n{finish}"
    );
}
