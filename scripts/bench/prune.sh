#!/usr/bin/env bash
# `embq prune` on N finished jobs (BENCHMARKS.md, "Queue stats at 10 million finished jobs"): a
# fresh database migrated by BIN, N done jobs last changed 8 days ago, 1,000 live ones, then
# `embq prune --older-than 7d` timed, printing its report (rows, batches, seconds).
# usage: prune.sh BIN ADMIN_DATABASE_URL [N]
set -euo pipefail
bin=$1 admin=$2 n=${3:-1000000}
db="bench_prune_$$"
url="${admin%/*}/$db"
psql -qAt "$admin" -c "CREATE DATABASE $db" >/dev/null
trap 'psql -qAt "$admin" -c "DROP DATABASE IF EXISTS $db" >/dev/null' EXIT
DATABASE_URL="$url" VECTOR_TYPE='real[]' "$bin" migrate >/dev/null
psql -qAt "$url" -v ON_ERROR_STOP=1 <<SQL >/dev/null
INSERT INTO embq.jobs (source_type, source_id, text, text_sha256, state, attempts, run_at,
                       created_at, updated_at, finished_at)
SELECT 'doc', g::text, 'x', '\x00'::bytea, 'done', 1, t, t, t, t
FROM generate_series(1, $n) g, LATERAL (SELECT now() - interval '8 days' - make_interval(secs => g) AS t) x;
INSERT INTO embq.jobs (source_type, source_id, text, text_sha256, state)
SELECT 'live', g::text, 'x', '\x00'::bytea, 'ready' FROM generate_series(1, 1000) g;
VACUUM ANALYZE embq.jobs;
SQL
DATABASE_URL="$url" "$bin" prune --older-than 7d --json
echo "left: $(psql -qAt "$url" -c "SELECT state || ' ' || count(*) FROM embq.jobs GROUP BY state" | tr '\n' ' ')"
