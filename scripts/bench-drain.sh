#!/usr/bin/env bash
# Queue throughput benchmark: N `embq worker --drain` processes over a backlog of hash-provider
# jobs on a throwaway PostgreSQL (and SQLite with one worker). Prints the median of RUNS runs.
#
#   scripts/bench-drain.sh                     # 20,000 jobs, 384 dims, workers 1 and 3, 3 runs
#   JOBS=20000 DIMS=1536 WORKERS="1 2 4" RUNS=3 BATCH_SIZE=500 scripts/bench-drain.sh
#   BIN=/tmp/embq-old CEILING_CLIENTS= SQLITE=0 scripts/bench-drain.sh   # a prebuilt binary only
#   VECTOR_TYPE=real[] scripts/bench-drain.sh   # the column type (auto: pgvector's vector(DIMS))
#   WRITEBACK=1 scripts/bench-drain.sh          # vectors written into an app table (public.docs)
#
# Each PostgreSQL run also measures the ceiling right before: the same claim-and-finish SQL
# (scripts/bench/claim-finish.sql) driven by pgbench with CEILING_CLIENTS connections and no
# worker, best of those client counts; the ratio embq / ceiling is printed per worker count.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh
# shellcheck source=scripts/lib/jobs.sh
source scripts/lib/jobs.sh

JOBS=${JOBS:-20000}
DIMS=${DIMS:-384}
WORKERS=${WORKERS:-"1 3"}
RUNS=${RUNS:-3}
BATCH_SIZE=${BATCH_SIZE:-100}
CONCURRENCY=${CONCURRENCY:-4}
CEILING_CLIENTS=${CEILING_CLIENTS-"2 4 8"} # empty: no ceiling (ratio printed as 0)
PROFILE=${PROFILE:-release}

if [ -n "${BIN:-}" ]; then
  # A prebuilt binary, e.g. to compare two builds side by side.
  bin=$BIN
else
  # shellcheck disable=SC2086 # FEATURES holds cargo flags, e.g. "--no-default-features"
  cargo build -q --profile "$PROFILE" -p embq ${FEATURES:-}
  bin=target/$PROFILE/embq
  [ "$PROFILE" = dev ] && bin=target/debug/embq
fi

if [ -z "${EMBQ_TEST_DATABASE_URL:-}" ]; then
  pg_start
  trap pg_stop EXIT
fi
work=$(mktemp -d)
trap 'rm -rf "$work"; pg_stop' EXIT
write_jobs "$JOBS" 1 "$work/jobs.jsonl"

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
export EMBEDDING_DIMENSIONS=$DIMS BATCH_SIZE MAX_CONCURRENT_JOBS=$CONCURRENCY HEALTH_PORT=0 METRICS_PORT=0 RUST_LOG=warn

drain() { # url workers -> "jobs/s peak_rss_kib cpu_us_per_job"
  local url=$1 n=$2 t0 t1 i
  t0=$(now)
  for i in $(seq "$n"); do
    DATABASE_URL=$url /usr/bin/time -f '%M %U %S' -o "$work/time.$i" "$bin" worker --drain &
  done
  wait
  t1=$(now)
  cat "$work"/time.* | awk -v n="$JOBS" -v b="$t0" -v c="$t1" \
    '{ if ($1 > rss) rss = $1; cpu += $2 + $3 } END { printf "%f %d %f\n", n / (c - b), rss, cpu * 1e6 / n }'
  rm -f "$work"/time.*
}

run_ceiling() { # -> best jobs/s of pgbench over CEILING_CLIENTS
  local best=0 c url t0 t1 rate per
  for c in $CEILING_CLIENTS; do
    url=$(fresh_db)
    DATABASE_URL=$url "$bin" migrate >/dev/null
    DATABASE_URL=$url "$bin" enqueue "$work/jobs.jsonl" >/dev/null
    psql -q "$url" -c "CREATE TABLE bench_vectors (ord bigint PRIMARY KEY, v real[] NOT NULL)" \
      -c "ALTER TABLE bench_vectors ALTER v SET STORAGE PLAIN" \
      -c "INSERT INTO bench_vectors SELECT o.o, (SELECT array_agg(random()::real) FROM generate_series(1, $DIMS) g WHERE o.o > 0) FROM generate_series(1, $BATCH_SIZE) AS o(o)" \
      -c "ALTER TABLE bench_vectors ALTER v TYPE $(column_type "$url") USING v::$(column_type "$url")" \
      -c "CHECKPOINT"
    per=$(((JOBS / BATCH_SIZE + c - 1) / c))
    t0=$(now)
    "$PG_BIN/pgbench" -n -M prepared -c "$c" -j "$c" -t "$per" -D batch="$BATCH_SIZE" -D dims="$DIMS" \
      -f scripts/bench/claim-finish.sql "$url" >"$work/pgbench.log" 2>&1 || { cat "$work/pgbench.log" >&2; exit 1; }
    t1=$(now)
    [ "$(psql -tA "$url" -c "SELECT count(*) FROM embq.embeddings")" = "$JOBS" ] || { echo "ceiling run left jobs undone" >&2; exit 1; }
    rate=$(awk -v n="$JOBS" -v a="$t0" -v b="$t1" 'BEGIN { print n / (b - a) }')
    best=$(awk -v a="$best" -v b="$rate" 'BEGIN { print (b > a) ? b : a }')
    drop_db "$url"
  done
  echo "$best"
}

column_type() { # url -> the type of embq.embeddings.embedding, as SQL
  psql -tA "$1" -c "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'embq.embeddings'::regclass AND attname = 'embedding'"
}

writeback_table() { # url: public.docs(id, embedding) with a row per job, registered as the destination of 'doc'
  local ty
  ty=$(column_type "$1")
  psql -q "$1" -c "CREATE TABLE public.docs (id bigint PRIMARY KEY, embedding $ty)" \
    -c "INSERT INTO public.docs (id) SELECT g FROM generate_series(0, $JOBS - 1) g" \
    -c "SELECT embq.add_destination('doc', 'public.docs', 'embedding', 'id')" >/dev/null
}

run_pg() { # workers -> "drain rss cpu enqueue dedupe ceiling"
  local n=$1 url e0 e1 d out ceiling
  ceiling=$(run_ceiling)
  url=$(fresh_db)
  DATABASE_URL=$url "$bin" migrate >/dev/null
  [ "${WRITEBACK:-0}" = 1 ] && writeback_table "$url"
  e0=$(now)
  DATABASE_URL=$url "$bin" enqueue "$work/jobs.jsonl" >/dev/null
  e1=$(now)
  psql -q "$url" -c "CHECKPOINT"
  out=$(drain "$url" "$n")
  local done_
  done_=$(psql -tA "$url" -c "SELECT count(*) FROM embq.embeddings")
  [ "$done_" = "$JOBS" ] || { echo "expected $JOBS embeddings, found $done_" >&2; exit 1; }
  if [ "${WRITEBACK:-0}" = 1 ]; then
    done_=$(psql -tA "$url" -c "SELECT count(*) FROM public.docs WHERE embedding IS NOT NULL")
    [ "$done_" = "$JOBS" ] || { echo "expected $JOBS written back, found $done_" >&2; exit 1; }
  fi
  # The same texts again: every job completes as unchanged, with no provider call and no vector write.
  DATABASE_URL=$url "$bin" enqueue "$work/jobs.jsonl" >/dev/null
  psql -q "$url" -c "CHECKPOINT"
  d=$(drain "$url" "$n" | cut -d' ' -f1)
  drop_db "$url"
  echo "$out $(awk -v n="$JOBS" -v a="$e0" -v b="$e1" 'BEGIN { print n / (b - a) }') $d $ceiling"
}

run_sqlite() {
  local url t0 t1
  rm -f "$work"/q.db*
  url="sqlite://$work/q.db"
  DATABASE_URL=$url "$bin" migrate >/dev/null
  DATABASE_URL=$url "$bin" enqueue "$work/jobs.jsonl" >/dev/null
  t0=$(now)
  DATABASE_URL=$url "$bin" worker --drain
  t1=$(now)
  awk -v n="$JOBS" -v b="$t0" -v c="$t1" 'BEGIN { print n / (c - b) }'
}

export VECTOR_TYPE=${VECTOR_TYPE:-auto}
echo "vector_type=$VECTOR_TYPE writeback=${WRITEBACK:-0} jobs=$JOBS dims=$DIMS batch=$BATCH_SIZE concurrency=$CONCURRENCY profile=$PROFILE runs=$RUNS ($(nproc) cores, $(date -u +%F))"
for w in $WORKERS; do
  : >"$work/r"
  for _ in $(seq "$RUNS"); do run_pg "$w" >>"$work/r"; done
  col() { awk -v k="$1" '{ print $k }' "$work/r"; }
  printf 'postgres workers=%s: drain median %.0f jobs/s (runs: %s) | ceiling median %.0f jobs/s (runs: %s) | ratio %.0f %% | dedupe re-run %.0f jobs/s | enqueue %.0f jobs/s | peak RSS %d KiB | worker CPU %.1f us/job\n' \
    "$w" "$(col 1 | median)" "$(col 1 | xargs printf '%.0f ')" "$(col 6 | median)" "$(col 6 | xargs printf '%.0f ')" \
    "$(awk '{ print ($6 > 0) ? 100 * $1 / $6 : 0 }' "$work/r" | median)" "$(col 5 | median)" "$(col 4 | median)" \
    "$(col 2 | median)" "$(col 3 | median)"
done
[ "${SQLITE:-1}" = 1 ] || exit 0
: >"$work/sq"
for _ in $(seq "$RUNS"); do run_sqlite >>"$work/sq"; done
printf 'sqlite    workers=1  drain median %.0f jobs/s  (runs: %s)\n' "$(median <"$work/sq")" "$(xargs printf '%.0f ' <"$work/sq")"
