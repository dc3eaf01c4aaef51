#!/usr/bin/env bash
# Peak RSS of one `embq worker --drain` over a backlog of hash-provider jobs, for each batch
# setting, on a throwaway PostgreSQL. Binaries given in BINS run in turn per setting (side by
# side, e.g. before and after a change); each run gets a fresh database.
#
#   scripts/bench-memory.sh                                    # target/release/embq, 20,000 jobs, 1,536 dims
#   BINS="/tmp/embq-before /tmp/embq-after" RUNS=3 scripts/bench-memory.sh
#   MEMORY_LIMITS="1024 128" JOBS=20000 DIMS=1536 scripts/bench-memory.sh
#   PROVIDER=local DIMS=384 REPEAT=12 JOBS=640 MEMORY_LIMITS=512 SETTINGS=BATCH_SIZE=32 scripts/bench-memory.sh
#                                   # the local model, batch 32, ~220-token texts (REPEAT copies of the receipt)
#
# Prints one line per run: binary, MEMORY_LIMIT_MB, setting, peak RSS (MiB), wall seconds and
# whether --drain exited by itself (a worker still running after TIMEOUT seconds is stopped
# and reported as "hung").
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh
# shellcheck source=scripts/lib/jobs.sh
source scripts/lib/jobs.sh

JOBS=${JOBS:-20000}
DIMS=${DIMS:-1536}
RUNS=${RUNS:-1}
TIMEOUT=${TIMEOUT:-300}
MEMORY_LIMITS=${MEMORY_LIMITS:-"1024 128"}
BINS=${BINS:-target/release/embq}
# Each setting is a space-free list of VAR=value pairs joined by commas.
PROVIDER=${PROVIDER:-hash}
REPEAT=${REPEAT:-1}
SETTINGS=${SETTINGS:-"ENABLE_BATCH_OPTIMIZATION=true BATCH_SIZE=5 BATCH_SIZE=100 BATCH_SIZE=1000,MAX_CONCURRENT_JOBS=32"}

if [ -z "${EMBQ_TEST_DATABASE_URL:-}" ]; then
  pg_start
  trap pg_stop EXIT
fi
work=$(mktemp -d)
trap 'rm -rf "$work"; pg_stop' EXIT
write_jobs "$JOBS" "$REPEAT" "$work/jobs.jsonl"

export EMBEDDING_PROVIDER=$PROVIDER EMBEDDING_DIMENSIONS=$DIMS HEALTH_PORT=0 METRICS_PORT=0 RUST_LOG=warn

one() { # bin limit setting -> "bin limit setting rss_mib wall_s exit"
  local bin=$1 limit=$2 setting=$3 url t0 t1 status=exited
  url=$(fresh_db)
  DATABASE_URL=$url "$bin" migrate >/dev/null
  DATABASE_URL=$url "$bin" enqueue "$work/jobs.jsonl" >/dev/null
  t0=$(date +%s.%N)
  # timeout's own RSS is tiny; /usr/bin/time reports the largest of it and its child.
  # shellcheck disable=SC2046 # the setting expands to VAR=value words for env
  env DATABASE_URL="$url" MEMORY_LIMIT_MB="$limit" $(tr ',' ' ' <<<"$setting") \
    /usr/bin/time -f '%M' -o "$work/time" timeout "$TIMEOUT" "$bin" worker --drain || {
    [ $? = 124 ] && status=hung || status=failed
  }
  t1=$(date +%s.%N)
  local done_
  done_=$(psql -tA "$url" -c "SELECT count(*) FROM embq.embeddings")
  [ "$done_" = "$JOBS" ] || status="$status,only-$done_-stored"
  drop_db "$url"
  awk -v b="$bin" -v l="$limit" -v s="$setting" -v a="$t0" -v c="$t1" -v st="$status" -v kib="$(tail -1 "$work/time")" \
    'BEGIN { printf "%s\t%s\t%s\t%.1f\t%.1f\t%s\n", b, l, s, kib / 1024, c - a, st }'
}

printf 'binary\tMEMORY_LIMIT_MB\tsetting\tpeak RSS MiB\twall s\tdrain\n'
for _ in $(seq "$RUNS"); do
  for limit in $MEMORY_LIMITS; do
    for setting in $SETTINGS; do
      for bin in $BINS; do
        one "$bin" "$limit" "$setting"
      done
    done
  done
done
