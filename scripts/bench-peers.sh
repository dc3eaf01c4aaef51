#!/usr/bin/env bash
# embq's dedupe path side by side with the fastest PostgreSQL job-queue peers, re-measured by one
# command on a throwaway PostgreSQL 15 (loopback only, fsync on; scripts/lib/pg.sh).
#
#   scripts/bench-peers.sh                          # 20,000 jobs, 3 rounds, all peers
#   JOBS=50000 RUNS=5 scripts/bench-peers.sh
#   PEERS="graphile-rs" scripts/bench-peers.sh      # only these peers (empty: embq alone)
#   BIN=/tmp/embq-old scripts/bench-peers.sh        # a prebuilt embq instead of a release build
#
# Environment:
#   JOBS       jobs per run (20000)
#   RUNS       rounds (3); each round runs every contender once, in the order embq, graphile-rs,
#              graphile-node, pg-boss, so drift on the machine hits all of them alike
#   PEERS      which peers to run ("graphile-rs graphile-node pg-boss")
#   BIN        an embq binary; default: cargo build --release -p embq --no-default-features
#   PEERS_DIR  where the peers are installed and built, outside the repo ($HOME/.cache/embq-peers):
#              node/ (npm install of the pinned Node packages), graphile-rs-target/ (the
#              CARGO_TARGET_DIR of scripts/peers/graphile-rs). Installing is idempotent.
#   Peer settings (defaults as printed at start): GRAPHILE_CONCURRENCY, GRAPHILE_POOL,
#   GRAPHILE_LOCAL_QUEUE, GRAPHILE_COMPLETE_BATCH_MS (both graphile peers), PGBOSS_BATCH,
#   PGBOSS_CONCURRENCY, PGBOSS_POLL_S, PGBOSS_POOL; embq: BATCH_SIZE, MAX_CONCURRENT_JOBS.
#
# Contenders (each run: a fresh database, N jobs enqueued untimed with the contender's own bulk
# API, then ONE worker process timed from spawn to exit while it drains them all):
#   embq dedupe    `embq worker --drain` over N jobs whose texts were all embedded already (the
#                  database was drained once and the same file enqueued again): each job is claimed
#                  and completed as unchanged, with no provider call and no vector write.
#   graphile-rs    the Rust graphile_worker crate (scripts/peers/graphile-rs), no-op task.
#   graphile-node  graphile-worker for Node (scripts/peers/graphile-node.mjs), no-op task.
#   pg-boss        pg-boss (scripts/peers/pg-boss.mjs), no-op batch handler.
# A peer's program exits as soon as its task ran N times and its tables show no job left, so
# the wall time covers start-up, the drain and exit for every contender alike. The peers also
# print their own time from worker start to drained ("worker-only" column: no process start-up).
# Each job's payload is the JSON line embq enqueues (source_type, source_id, text).
# The ratio line: embq dedupe / best peer, the median over rounds of (embq / the fastest peer of
# that round), and beside it the ratio of the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh

JOBS=${JOBS:-20000}
RUNS=${RUNS:-3}
PEERS=${PEERS-"graphile-rs graphile-node pg-boss"}
PEERS_DIR=${PEERS_DIR:-$HOME/.cache/embq-peers}
# The versions installed (graphile_worker's is pinned in scripts/peers/graphile-rs/Cargo.toml).
GRAPHILE_NODE_VERSION=0.18.0
PGBOSS_VERSION=12.38.1

# Peer settings, exported to the peer programs. graphile: the configuration graphile-worker's
# performance page gives for its own numbers (24 concurrent jobs, pool 25, local queue 500,
# batched completion with delay 0), for the Node package and the Rust crate alike.
export GRAPHILE_CONCURRENCY=${GRAPHILE_CONCURRENCY:-24} GRAPHILE_POOL=${GRAPHILE_POOL:-25}
export GRAPHILE_LOCAL_QUEUE=${GRAPHILE_LOCAL_QUEUE:-500} GRAPHILE_COMPLETE_BATCH_MS=${GRAPHILE_COMPLETE_BATCH_MS:-0}
# pg-boss documents no throughput setting: batches of 500 (one fetch and one completion statement
# each), 4 such workers in the process (localConcurrency), no poll delay while batches come back
# full (burstWhenBatchFull). On the 2-core machine this sat on the plateau of a sweep (batch 100:
# ~2.5x slower; 500-2000 with 1-8 workers: within noise of each other).
export PGBOSS_BATCH=${PGBOSS_BATCH:-500} PGBOSS_CONCURRENCY=${PGBOSS_CONCURRENCY:-4}
export PGBOSS_POLL_S=${PGBOSS_POLL_S:-0.5} PGBOSS_POOL=${PGBOSS_POOL:-10}
# embq: the hash provider (no network), the settings of scripts/bench-drain.sh.
export EMBEDDING_PROVIDER=hash EMBEDDING_DIMENSIONS=${DIMS:-384} BATCH_SIZE=${BATCH_SIZE:-100}
export MAX_CONCURRENT_JOBS=${MAX_CONCURRENT_JOBS:-4} HEALTH_PORT=0 METRICS_PORT=0 RUST_LOG=${RUST_LOG:-warn}
export PEERS_NODE_DIR=$PEERS_DIR/node
DRAIN_LIMIT=${DRAIN_LIMIT:-900} # seconds: a drain that takes longer is killed and the run fails

say() { echo "$*" >&2; }
now() { date +%s.%N; }
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)] }'; }

# --- installing the peers (idempotent; a peer that cannot be had is skipped, with the reason) ---

declare -A version skip_reason
have_peer() { [[ " $PEERS " == *" $1 "* ]] && [ -z "${skip_reason[$1]:-}" ]; }
skip_peer() {
  skip_reason[$1]=$2
  say "SKIPPING $1: $2"
}

node_pkg_version() { # package -> installed version under PEERS_NODE_DIR, or nothing
  local f=$PEERS_NODE_DIR/node_modules/$1/package.json
  if [ -f "$f" ]; then node -p "require(process.argv[1]).version" "$f" 2>/dev/null || true; fi
}

install_node_peers() {
  local wanted=() p
  for p in graphile-node pg-boss; do [[ " $PEERS " == *" $p "* ]] && wanted+=("$p"); done
  [ ${#wanted[@]} -gt 0 ] || return 0
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    for p in "${wanted[@]}"; do skip_peer "$p" "node and npm are needed (apt-get install nodejs npm)"; done
    return 0
  fi
  mkdir -p "$PEERS_NODE_DIR"
  if [ "$(node_pkg_version graphile-worker)" != "$GRAPHILE_NODE_VERSION" ] || [ "$(node_pkg_version pg-boss)" != "$PGBOSS_VERSION" ]; then
    say "installing graphile-worker@$GRAPHILE_NODE_VERSION pg-boss@$PGBOSS_VERSION into $PEERS_NODE_DIR (npm)"
    [ -f "$PEERS_NODE_DIR/package.json" ] || echo '{ "name": "embq-bench-peers", "private": true }' >"$PEERS_NODE_DIR/package.json"
    if ! (cd "$PEERS_NODE_DIR" && npm install --no-audit --no-fund --save-exact --loglevel=error \
      "graphile-worker@$GRAPHILE_NODE_VERSION" "pg-boss@$PGBOSS_VERSION") >"$PEERS_DIR/npm.log" 2>&1; then
      for p in "${wanted[@]}"; do skip_peer "$p" "npm install failed (see $PEERS_DIR/npm.log): $(tail -n 3 "$PEERS_DIR/npm.log" | tr '\n' ' ')"; done
      return 0
    fi
  fi
  # The packages declare engines newer than some machines' node: check that they load here.
  for p in "${wanted[@]}"; do
    local pkg=graphile-worker
    [ "$p" = pg-boss ] && pkg=pg-boss
    if ! node --input-type=module -e "
      import { createRequire } from 'node:module';
      import { pathToFileURL } from 'node:url';
      await import(pathToFileURL(createRequire(process.argv[1] + '/package.json').resolve('$pkg')).href);
    " "$PEERS_NODE_DIR" >"$PEERS_DIR/node-load.log" 2>&1; then
      skip_peer "$p" "$pkg does not load on node $(node --version): $(grep -m 1 Error "$PEERS_DIR/node-load.log" || tail -n 1 "$PEERS_DIR/node-load.log")"
    fi
  done
  version[graphile-node]=$(node_pkg_version graphile-worker)
  version[pg-boss]=$(node_pkg_version pg-boss)
  # Both packages declare engines node >= 22; they are run on whatever node is here, and said so.
  say "node $(node --version): graphile-worker ${version[graphile-node]} (engines: $(node -p "require(process.argv[1]).engines.node" "$PEERS_NODE_DIR/node_modules/graphile-worker/package.json")), pg-boss ${version[pg-boss]} (engines: $(node -p "require(process.argv[1]).engines.node" "$PEERS_NODE_DIR/node_modules/pg-boss/package.json"))"
}

GRAPHILE_RS_BIN=$PEERS_DIR/graphile-rs-target/release/embq-peer-graphile-rs
install_graphile_rs() {
  have_peer graphile-rs || return 0
  mkdir -p "$PEERS_DIR"
  say "building scripts/peers/graphile-rs (CARGO_TARGET_DIR=$PEERS_DIR/graphile-rs-target; the first build takes minutes)"
  if ! CARGO_TARGET_DIR=$PEERS_DIR/graphile-rs-target cargo build -q --release --locked \
    --manifest-path scripts/peers/graphile-rs/Cargo.toml >"$PEERS_DIR/graphile-rs-build.log" 2>&1; then
    skip_peer graphile-rs "cargo build failed (see $PEERS_DIR/graphile-rs-build.log): $(tail -n 3 "$PEERS_DIR/graphile-rs-build.log" | tr '\n' ' ')"
    return 0
  fi
  version[graphile-rs]=$(awk '/^name = "graphile_worker"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' scripts/peers/graphile-rs/Cargo.lock)
}

for p in $PEERS; do
  case $p in graphile-rs | graphile-node | pg-boss) ;; *) say "unknown peer '$p' (known: graphile-rs graphile-node pg-boss)"; exit 2 ;; esac
done
install_node_peers
install_graphile_rs

if [ -n "${BIN:-}" ]; then
  bin=$BIN
else
  say "building embq (release, --no-default-features)"
  cargo build -q --release -p embq --no-default-features
  bin=target/release/embq
fi
version[embq]="$("$bin" --version 2>/dev/null | awk '{ print $NF }') ($(git rev-parse --short HEAD 2>/dev/null || echo '?'))"

# --- the contenders: each prints "wall_jobs_per_s worker_only_jobs_per_s" ('-': not measured) ---

work=$(mktemp -d)
trap 'rm -rf "$work"; pg_stop' EXIT
pg_start
python3 -c "
import json
for i in range($JOBS):
    print(json.dumps({'source_type': 'doc', 'source_id': str(i), 'text': f'receipt {i}: coffee beans, oat milk, total {i % 97}.50 paid by card'}))
" >"$work/jobs.jsonl"

rate() { awk -v n="$JOBS" -v a="$1" -v b="$2" 'BEGIN { printf "%.1f\n", n / (b - a) }'; }
checkpoint() { psql -q "$1" -c "CHECKPOINT"; }
quiet() { "$@" >"$work/cmd.log" 2>&1 || { cat "$work/cmd.log" >&2; return 1; }; } # output only on failure

run_embq() {
  local url t0 t1 left
  url=$(fresh_db)
  DATABASE_URL=$url quiet "$bin" migrate
  DATABASE_URL=$url quiet "$bin" enqueue "$work/jobs.jsonl"
  DATABASE_URL=$url quiet timeout "$DRAIN_LIMIT" "$bin" worker --drain # first pass: embeds every text
  DATABASE_URL=$url quiet "$bin" enqueue "$work/jobs.jsonl"            # the same texts again
  checkpoint "$url"
  t0=$(now)
  DATABASE_URL=$url timeout "$DRAIN_LIMIT" "$bin" worker --drain >&2
  t1=$(now)
  left=$(psql -tA "$url" -c "SELECT count(*) FROM embq.jobs WHERE state NOT IN ('done', 'superseded')")
  [ "$left" = 0 ] || { say "embq: $left jobs not done after the drain"; exit 1; }
  left=$(psql -tA "$url" -c "SELECT count(*) FROM embq.embeddings")
  [ "$left" = "$JOBS" ] || { say "embq: expected $JOBS embeddings, found $left"; exit 1; }
  drop_db "$url"
  echo "$(rate "$t0" "$t1") -"
}

run_peer() { # name command... (the command takes: enqueue|drain URL N)
  local name=$1 url t0 t1 out
  shift
  url=$(fresh_db)
  quiet "$@" enqueue "$url" "$JOBS"
  checkpoint "$url"
  t0=$(now)
  out=$(timeout "$DRAIN_LIMIT" "$@" drain "$url" "$JOBS") || { say "$name: the drain failed"; exit 1; }
  t1=$(now)
  drop_db "$url"
  echo "$(rate "$t0" "$t1") $(awk -v n="$JOBS" '/^drained / { printf "%.1f\n", n / $5 }' <<<"$out")"
}

run_contender() {
  case $1 in
    embq) run_embq ;;
    graphile-rs) run_peer "$1" "$GRAPHILE_RS_BIN" ;;
    graphile-node) run_peer "$1" node scripts/peers/graphile-node.mjs ;;
    pg-boss) run_peer "$1" node scripts/peers/pg-boss.mjs ;;
  esac
}

contenders=(embq)
for p in graphile-rs graphile-node pg-boss; do have_peer "$p" && contenders+=("$p"); done

say "jobs=$JOBS runs=$RUNS ($(nproc) cores, $(date -u +%F), PostgreSQL $(psql -tA "$EMBQ_TEST_DATABASE_URL" -c 'SHOW server_version'), fsync $(psql -tA "$EMBQ_TEST_DATABASE_URL" -c 'SHOW fsync'))"
say "embq dedupe:   one worker, BATCH_SIZE=$BATCH_SIZE MAX_CONCURRENT_JOBS=$MAX_CONCURRENT_JOBS, hash provider ($EMBEDDING_DIMENSIONS dims)"
have_peer graphile-rs && say "graphile-rs:   one worker, concurrency=$GRAPHILE_CONCURRENCY pool=$GRAPHILE_POOL local_queue=$GRAPHILE_LOCAL_QUEUE complete_job_batch_delay=${GRAPHILE_COMPLETE_BATCH_MS}ms"
have_peer graphile-node && say "graphile-node: one worker, concurrentJobs=$GRAPHILE_CONCURRENCY maxPoolSize=$GRAPHILE_POOL localQueue.size=$GRAPHILE_LOCAL_QUEUE completeJobBatchDelay=$GRAPHILE_COMPLETE_BATCH_MS"
have_peer pg-boss && say "pg-boss:       one worker, batchSize=$PGBOSS_BATCH localConcurrency=$PGBOSS_CONCURRENCY burstWhenBatchFull pollingIntervalSeconds=$PGBOSS_POLL_S pool=$PGBOSS_POOL"

: >"$work/results" # round contender wall worker-only
started=$(now)
for r in $(seq "$RUNS"); do
  for c in "${contenders[@]}"; do
    res=$(run_contender "$c")
    say "round $r/$RUNS $c: $res jobs/s (wall, worker-only)"
    echo "$r $c $res" >>"$work/results"
  done
done

# --- the table ---

col() { awk -v c="$1" -v k="$2" '$2 == c { print $k }' "$work/results"; }
label() {
  case $1 in
    embq) echo "embq dedupe" ;;
    graphile-rs) echo "graphile_worker (Rust)" ;;
    graphile-node) echo "graphile-worker (Node)" ;;
    pg-boss) echo "pg-boss (Node)" ;;
  esac
}
echo
printf '%-24s %-22s %14s  %-30s %14s\n' contender version "median jobs/s" "runs (jobs/s)" "worker-only"
for c in "${contenders[@]}"; do
  wo=$(col "$c" 4 | grep -v -- - | median || true)
  printf '%-24s %-22s %14.0f  %-30s %14s\n' "$(label "$c")" "${version[$c]}" "$(col "$c" 3 | median)" \
    "$(col "$c" 3 | xargs printf '%.0f ')" "$([ -n "$wo" ] && printf '%.0f' "$wo" || echo -)"
done
if [ ${#contenders[@]} -gt 1 ]; then
  # Per round: embq / the fastest peer of that round; then the median of those.
  ratios=$(awk '$2 == "embq" { e[$1] = $3 } $2 != "embq" && $3 > b[$1] { b[$1] = $3; who[$1] = $2 }
    END { for (r in e) printf "%s %.3f %s\n", r, e[r] / b[r], who[r] }' "$work/results" | sort -n)
  best=""
  bestm=0
  for c in "${contenders[@]:1}"; do
    m=$(col "$c" 3 | median)
    if awk -v a="$m" -v b="$bestm" 'BEGIN { exit !(a > b) }'; then best=$c bestm=$m; fi
  done
  printf '\nembq dedupe / best peer: %.2fx (median of per-round ratios against that round'"'"'s fastest peer; rounds: %s)\n' \
    "$(awk '{ print $2 }' <<<"$ratios" | median)" "$(awk '{ printf "%s (%s) ", $2, $3 }' <<<"$ratios")"
  printf 'ratio of medians: embq %.0f / %s %.0f = %.2fx\n' "$(col embq 3 | median)" "$(label "$best")" "$bestm" \
    "$(awk -v a="$(col embq 3 | median)" -v b="$bestm" 'BEGIN { print a / b }')"
fi
for p in $PEERS; do [ -n "${skip_reason[$p]:-}" ] && echo "skipped $p: ${skip_reason[$p]}"; done
printf 'jobs=%s runs=%s, %s cores, %.0f s for the rounds\n' "$JOBS" "$RUNS" "$(nproc)" "$(awk -v a="$started" -v b="$(now)" 'BEGIN { print b - a }')"
