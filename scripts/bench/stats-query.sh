#!/usr/bin/env bash
# The queue-stats query at N finished jobs (BENCHMARKS.md, "Queue stats at 10 million finished
# jobs"): a fresh database migrated by BIN, N done jobs plus a live queue (1,000 ready, 50
# running, 20 dead), VACUUM ANALYZE, then EXPLAIN ANALYZE of each query RUNS times, printing the
# median execution time and the plan's top scan.
#   before:  the GROUP BY over all of embq.jobs every worker ran every 10 s (Queue::stats)
#   after:   the live-states count one worker runs (Queue::live_stats, through jobs_live_idx)
#   after, no index: the same query with jobs_live_idx dropped (what the index adds)
# usage: stats-query.sh BIN ADMIN_DATABASE_URL [N] [RUNS]
# The table is made UNLOGGED (no WAL for ~2 GB of rows): reads and the plans are unaffected.
set -euo pipefail
bin=$1 admin=$2 n=${3:-10000000} runs=${4:-7}
db="bench_stats_$$"
url="${admin%/*}/$db"
psql -qAt "$admin" -c "CREATE DATABASE $db" >/dev/null
trap 'psql -qAt "$admin" -c "DROP DATABASE IF EXISTS $db" >/dev/null' EXIT
DATABASE_URL="$url" EMBEDDING_PROVIDER=hash VECTOR_TYPE='real[]' "$bin" migrate >/dev/null
psql -qAt "$url" -v ON_ERROR_STOP=1 <<SQL >/dev/null
ALTER TABLE embq.jobs SET UNLOGGED;
INSERT INTO embq.jobs (source_type, source_id, text, text_sha256, state, attempts, run_at,
                       created_at, updated_at, finished_at)
SELECT 'doc', g::text, 'x', '\x00'::bytea, 'done', 1, t, t, t, t
FROM generate_series(1, $n) g, LATERAL (SELECT now() - make_interval(secs => ($n - g) / 100.0) AS t) x;
INSERT INTO embq.jobs (source_type, source_id, text, text_sha256, state, priority, run_at)
SELECT 'live', g::text, 'x', '\x00'::bytea, 'ready', g % 3, now() - interval '1 minute'
FROM generate_series(1, 1000) g;
INSERT INTO embq.jobs (source_type, source_id, text, text_sha256, state, attempts, lease_owner,
                       lease_token, lease_expires_at)
SELECT 'run', g::text, 'x', '\x00'::bytea, 'running', 1, 'w', 't', now() + interval '1 minute'
FROM generate_series(1, 50) g;
INSERT INTO embq.jobs (source_type, source_id, text, text_sha256, state, attempts, finished_at)
SELECT 'dead', g::text, 'x', '\x00'::bytea, 'dead', 5, now() FROM generate_series(1, 20) g;
VACUUM ANALYZE embq.jobs;
SQL
echo "rows: $(psql -qAt "$url" -c 'SELECT count(*) FROM embq.jobs'), table $(psql -qAt "$url" -c "SELECT pg_size_pretty(pg_total_relation_size('embq.jobs'))")"

# The two queries as the store runs them (queue/postgres/maintenance.rs and retention.rs).
before="SELECT state, (run_at <= now()) AS due, priority, count(*) AS n,
    EXTRACT(EPOCH FROM (now() - min(run_at)))::float8 AS age FROM embq.jobs GROUP BY 1, 2, 3"
after="SELECT state, (run_at <= now()) AS due, priority, count(*) AS n,
    EXTRACT(EPOCH FROM (now() - min(run_at)))::float8 AS age FROM embq.jobs
    WHERE state IN ('ready', 'running', 'dead') GROUP BY 1, 2, 3"

# Median execution time (ms) and the first scan node of RUNS EXPLAIN ANALYZE runs, JIT off as
# in the workers' sessions.
measure() {
  local label=$1 sql=$2 times=() plan i
  for ((i = 0; i < runs; i++)); do
    plan=$(psql -qAt "$url" -c "SET jit = off" -c "EXPLAIN (ANALYZE, FORMAT JSON) $sql")
    times+=("$(python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Execution Time"])' <<<"$plan")")
  done
  local scan
  scan=$(python3 -c '
import json, sys
def walk(p):
    if "Scan" in p["Node Type"]:
        return p["Node Type"] + (" on " + p.get("Index Name", p.get("Relation Name", "")))
    for c in p.get("Plans", []):
        r = walk(c)
        if r:
            return r
print(walk(json.load(sys.stdin)[0]["Plan"]))' <<<"$plan")
  printf '%-18s median %10.2f ms   runs: %s   scan: %s\n' "$label" \
    "$(printf '%s\n' "${times[@]}" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')" \
    "$(printf '%.1f ' "${times[@]}")" "$scan"
}

measure "before" "$before"
measure "after" "$after"
psql -qAt "$url" -c "DROP INDEX embq.jobs_live_idx" >/dev/null
measure "after, no index" "$after"
